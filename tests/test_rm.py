"""tether.reward and `tether rm`: pooling, the K-choose-2 batching, micro-batch invariance, normalisation,
save/load, and a smoke run that learns a marker word and resumes step for step after a kill."""
from __future__ import annotations

import ast
import copy
import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForSequenceClassification,
)

import tether.stages.rm as rm
import tether.training as training
from tether.data.preferences import Comparison, write_comparisons
from tether.distributed import checkpoint_layers
from tether.math.losses import bradley_terry_loss
from tether.models import PRESETS, build_model, save_pretrained
from tether.optim import adamw
from tether.reward import (
    RewardModel,
    collate,
    encode_pair,
    pool_cls,
    pool_last,
    pool_mean,
)
from tether.rm_batch import (
    Pair,
    collate_pairs,
    length_chunks,
    pair_rewards,
    prefix_saving,
    shared_prefixes,
)
from tether.stages.rm import (
    RMConfig,
    encode_comparisons,
    group_by_prompt,
    micro_batches,
    normalise,
    schedule,
    split_by_prompt,
    train_step,
)
from tether.tokenizer import train_tokenizer

WORDS = "the river city market bridge north old green quiet tall stone road small harbour hill bright".split()
TOPICS = ("rivers cities markets bridges mountains forests islands deserts lakes castles ports valleys roads "
          "towers").split()
MARKER = "splendid"


def sentence(rng: random.Random, marker: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
    if marker:
        words.insert(rng.randint(0, len(words)), MARKER)
    return " ".join(words) + "."


def synthetic_comparisons(seed: int = 0) -> list[Comparison]:
    """14 prompts x 4 comparisons = 56, 14 of them ties: per prompt two responses with the marker (m1, m2)
    and two without (p1, p2); the marker wins, two plain responses tie. m1, p1, p2 appear in 2-3 pairs each."""
    rng, out = random.Random(seed), []
    for topic in TOPICS:
        prompt = f"Tell me about {topic}."
        m1, m2, p1, p2 = sentence(rng, True), sentence(rng, True), sentence(rng, False), sentence(rng, False)
        out += [Comparison(prompt, m1, p1, "A", 1.0), Comparison(prompt, p2, m1, "B", 0.5),
                Comparison(prompt, m2, p2, "A"), Comparison(prompt, p1, p2, "tie")]
    return out


@pytest.fixture(scope="module")
def tok():
    """A 300-token BPE trained on a few sentences (the marker is one token)."""
    rng = random.Random(1)
    texts = [sentence(rng, i % 2 == 0) for i in range(200)] + [f"Tell me about {t}." for t in TOPICS]
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def backbone_dir(tok, tmp_path_factory) -> Path:
    """An untrained "test"-preset causal LM saved as an HF folder (the RM backbone)."""
    out = tmp_path_factory.mktemp("backbone")
    save_pretrained(build_model("test", tok, seed=0), tok, str(out))
    return out


def new_rm(tok, pool: str = "last", seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    return RewardModel(build_model("test", tok, seed=seed), tok, pool=pool, max_length=64)


# ---------------------------------------------------------------------------------------------
# 1. Pooling and padding


def test_pools_hand_built():
    hidden = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1).expand(2, 5, 2)  # (B, T, H): value = 5b + t
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # lengths 3 and 5, right-padded
    # last non-pad: row 0 -> t = 2 (value 2), row 1 -> t = 4 (value 9)
    assert pool_last(hidden, right)[:, 0].tolist() == [2.0, 9.0]
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])  # left padding, and a hole at the end
    assert pool_last(hidden, left)[:, 0].tolist() == [4.0, 8.0]
    assert pool_cls(hidden, right)[:, 0].tolist() == [0.0, 5.0]
    # mean: row 0 (0 + 1 + 2) / 3 = 1; row 1 (5 + 6 + 7 + 8 + 9) / 5 = 7
    assert pool_mean(hidden, right)[:, 0].tolist() == [1.0, 7.0]


def test_reward_is_read_at_the_eos_of_a_right_padded_sequence(tok):
    model = new_rm(tok).eval()
    short, _ = encode_pair(tok, "Tell me about lakes.", "old road.")
    long, _ = encode_pair(tok, "Tell me about lakes.", "the quiet green harbour by the tall stone bridge.")
    assert short[-1] == long[-1] == tok.eos_token_id and len(short) < len(long)
    batch = collate([short, long], model.pad_id)
    assert batch["attention_mask"][0].tolist() == [1] * len(short) + [0] * (len(long) - len(short))
    with torch.no_grad():
        hidden = model.body(**batch).last_hidden_state  # (2, T, H)
        expected = model.head(hidden[0, len(short) - 1]).squeeze()  # by hand: the last real token of row 0
        rewards = model(**batch)
        alone = model(**collate([short], model.pad_id))
    torch.testing.assert_close(rewards[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(rewards[0], alone[0], atol=1e-5, rtol=0)  # padding changes nothing


def test_truncation_cuts_the_prompt_and_keeps_the_scored_reply(tok):
    prompt, reply = "Tell me about lakes and rivers and the tall stone bridge by the harbour.", "old road."
    full, cut = encode_pair(tok, prompt, reply)
    assert not cut
    reply_tail = full[-4:]  # the reply's last tokens and its <eos>, read by the score
    short, cut = encode_pair(tok, prompt, reply, max_length=len(full) - 3)
    # <bos>, then the last len(full) - 4 tokens: three prompt tokens after <bos> are gone
    assert cut and short == full[:1] + full[4:] and short[-4:] == reply_tail and short[-1] == tok.eos_token_id
    plain = copy.deepcopy(tok)
    plain.chat_template = None  # pair encoding: the tokenizer's own truncation keeps [CLS]/[SEP] in place
    whole, _ = encode_pair(plain, prompt, reply, pair_encoding=True)
    clipped, cut = encode_pair(plain, prompt, reply, max_length=len(whole) - 2, pair_encoding=True)
    assert cut and len(clipped) == len(whole) - 2
    assert clipped[-len(plain(reply, add_special_tokens=False)["input_ids"]):] == \
        plain(reply, add_special_tokens=False)["input_ids"]  # the prompt absorbed the cut, the reply is whole
    long_reply = " ".join(["the quiet green harbour"] * 20)  # longer than max_length alone: both are cut
    both, cut = encode_pair(plain, prompt, long_reply, max_length=16, pair_encoding=True)
    assert cut and len(both) == 16


def test_scoring_a_pair_in_either_order_gives_the_same_rewards(tok):
    model = new_rm(tok)
    prompt, a, b = "Tell me about ports.", "the splendid harbour.", "a small stone road by the quiet river hill."
    ab = model.score([prompt, prompt], [a, b])
    ba = model.score([prompt, prompt], [b, a])
    one_by_one = model.score([prompt, prompt], [a, b], batch_size=1)
    torch.testing.assert_close(ab, ba.flip(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(ab, one_by_one, atol=1e-5, rtol=0)
    # A conversation prompt ending in the same user turn reads the same tokens as the plain string.
    convo = model.score([[{"role": "user", "content": prompt}]], [a])
    torch.testing.assert_close(convo, ab[:1], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# 2. Batches of prompt groups, each distinct sequence once


def test_each_distinct_sequence_is_scored_once(tok):
    pairs, report = encode_comparisons(tok, synthetic_comparisons()[:4], RMConfig(max_length=64))
    assert report["ties"] == 1 and report["unlabelled_skipped"] == 0
    batch = collate_pairs(pairs, tok.pad_token_id)
    # 4 pairs over m1, p1, p2, m2: 4 distinct sequences, not 8, sorted by length; each pair's rows hold its texts.
    rows = [ids[mask.bool()].tolist() for chunk_ids, chunk_mask in batch.chunks for ids, mask in zip(chunk_ids,
                                                                                                     chunk_mask)]
    assert len(rows) == 4 and [len(r) for r in rows] == sorted(len(r) for r in rows)
    assert [rows[i] for i in batch.index_a.tolist()] == [p.ids_a for p in pairs]
    assert [rows[i] for i in batch.index_b.tolist()] == [p.ids_b for p in pairs]
    assert batch.target.tolist() == [1.0, 0.0, 1.0, 0.5]
    assert batch.margin.tolist() == [0.0] * 4  # margin off
    with_margin, _ = encode_comparisons(tok, synthetic_comparisons()[:4], RMConfig(max_length=64, margin=True))
    assert [p.margin for p in with_margin] == [1.0, 0.5, 0.0, 0.0]  # unrated and tie: 0


def test_length_chunks_minimise_padding_plus_a_cost_per_chunk():
    # 2, 2, 9, 9: one chunk pads to 4 x 9 = 36 (+ overhead 5 = 41); two chunks 2 x 2 + 2 x 9 = 22 (+ 10 = 32)
    assert length_chunks([2, 2, 9, 9], overhead=5) == [2, 4]
    assert length_chunks([2, 2, 9, 9], overhead=20) == [4]  # a pass costs more than the padding it saves
    assert length_chunks([3, 3, 3], overhead=0) == [3]  # equal lengths: cutting saves nothing (ties keep one chunk)
    assert length_chunks([1, 5, 6, 20], overhead=4) == [1, 3, 4]  # 1 + 4 | 2 x 6 + 4 | 20 + 4 = 45 (all: 84)
    assert length_chunks([]) == []


def test_chunked_pairs_score_as_one_padded_batch(tok):
    pairs, _ = encode_comparisons(tok, synthetic_comparisons(), RMConfig(max_length=64))
    model = new_rm(tok)
    one = collate_pairs(pairs, tok.pad_token_id)
    whole = [(torch.cat([torch.nn.functional.pad(i, (0, 64 - i.size(1)), value=tok.pad_token_id) for i, _ in
                         one.chunks]), torch.cat([torch.nn.functional.pad(m, (0, 64 - m.size(1))) for _, m in
                                                  one.chunks]))]
    assert len(one.chunks) > 1  # the test data's lengths vary enough to cut
    assert len(collate_pairs(pairs, tok.pad_token_id, chunked=False).chunks) == 1  # FSDP2: one pass per micro-batch
    chunked = pair_rewards(model, one)
    padded = pair_rewards(model, dataclasses.replace(one, chunks=whole))
    for a, b in zip(chunked, padded):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _pair(key: str, a: list[int], b: list[int]) -> Pair:
    return Pair(key, a, b, 1.0, 0.0, 1, 1)


def test_shared_prefixes_by_hand():
    prefix_of = shared_prefixes([
        _pair("p", [1, 2, 3, 4, 5], [1, 2, 3, 9]), _pair("p", [1, 2, 3, 9], [1, 2, 7, 7]),  # common start: 1, 2
        _pair("q", [7, 8], [6, 8]),  # no common start: each keeps its first token
        _pair("r", [4, 4], [4, 4, 5])])  # one sequence starts the other: the shorter keeps one token of its own
    assert prefix_of == {(1, 2, 3, 4, 5): (1, 2), (1, 2, 3, 9): (1, 2), (1, 2, 7, 7): (1, 2), (7, 8): (7,),
                         (6, 8): (6,), (4, 4): (4,), (4, 4, 5): (4,)}
    # saved: prefix tokens 2 + 2 + 2 + 1 + 1 + 1 + 1 = 10, less the prefix passes: lengths 1, 1, 1, 2 in chunks
    # [1, 1, 1] + [2] = 3 + 1 + 2 + 1 = 7 (one chunk: 4 x 2 + 1 = 9)
    assert prefix_saving(prefix_of, overhead=1) == 3
    assert shared_prefixes([_pair("s", [3], [3, 4])]) == {}  # a one-token sequence has no tail
    # pad_id 0 (eos pads): each tail keeps the last non-pad token, 9, where the reward is read; without pad_id the
    # common prefix is all of 5, 6, 9 and the tails would hold padding only
    eos_ended = [_pair("e", [5, 6, 9, 0], [5, 6, 9, 0, 0])]
    assert shared_prefixes(eos_ended) == {(5, 6, 9, 0): (5, 6, 9), (5, 6, 9, 0, 0): (5, 6, 9)}
    assert shared_prefixes(eos_ended, pad_id=0) == {(5, 6, 9, 0): (5, 6), (5, 6, 9, 0, 0): (5, 6)}
    assert shared_prefixes([_pair("f", [5, 0], [5, 0, 0])], pad_id=0) == {}  # read at the first token: no tail


def test_shared_prefixes_score_and_train_as_whole_sequences(tok):
    pairs, _ = encode_comparisons(tok, synthetic_comparisons(), RMConfig(max_length=64))
    model = new_rm(tok)
    assert model.shares_prefixes and not new_rm(tok, pool="mean").shares_prefixes
    checkpointed = new_rm(tok)
    checkpoint_layers(checkpointed.backbone)  # tether's gradient checkpointing runs layers without a cache
    assert not checkpointed.shares_prefixes
    whole, shared = collate_pairs(pairs, tok.pad_token_id), collate_pairs(pairs, tok.pad_token_id, share_prefixes=True)
    assert sum(len(ids) for ids, _ in shared.prefixes) == len(TOPICS)  # one prefix per prompt
    assert sum(m.sum() for _, m in shared.chunks) < sum(m.sum() for _, m in whole.chunks)  # tails only

    def rewards_and_grads(batch):
        model.zero_grad()
        r_a, r_b, r = pair_rewards(model, batch)
        (r_a - r_b).pow(2).sum().backward()
        return [r_a, r_b], [p.grad.clone() for p in model.parameters()]

    # the prefixes cut into two length chunks, each padded to its own longest: their caches are joined
    (ids, mask), = shared.prefixes
    k = len(ids) // 2
    w = int(mask[:k].sum(1).max())
    assert w < ids.size(1)  # the prompts differ in length
    two = dataclasses.replace(shared, prefixes=[(ids[:k, :w], mask[:k, :w]), (ids[k:], mask[k:])])
    plain, plain_grads = rewards_and_grads(whole)
    for batch in (shared, two):
        tails, tail_grads = rewards_and_grads(batch)
        for a, b in zip(plain + plain_grads, tails + tail_grads):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    # each prompt and its sequences' tails in one row, under sdpa's boolean mask and eager's additive one
    rows = collate_pairs(pairs, tok.pad_token_id, share_prefixes=True, rows=True)
    assert model.tree_shares and len(rows.rows) >= 1 and not rows.chunks
    assert sum(ids.size(0) for ids, *_ in rows.rows) == len(TOPICS)  # one row per prompt
    for attention in ("sdpa", "eager"):
        model.classifier.set_attn_implementation(attention)
        tails, tail_grads = rewards_and_grads(rows)
        for a, b in zip(plain + plain_grads, tails + tail_grads):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_split_by_prompt_and_schedule_keep_prompt_groups_whole(tok):
    pairs, _ = encode_comparisons(tok, synthetic_comparisons(), RMConfig(max_length=64))
    train, held = split_by_prompt(pairs, 0.25, seed=3)
    assert len(held) == 3 * 4 and len(train) == 11 * 4
    assert not {p.prompt_key for p in train} & {p.prompt_key for p in held}
    plan = schedule(group_by_prompt(train), batch_size=8, seed=0, steps=20)
    assert plan == schedule(group_by_prompt(train), batch_size=8, seed=0, steps=20)  # pure
    for _, batch in plan:
        assert len(batch) in (8, 4)  # two groups of 4, or the epoch's odd group out
        keys = [train[i].prompt_key for i in batch]
        for key in set(keys):  # a prompt's comparisons are all in this batch
            assert keys.count(key) == 4
    epoch0 = [i for e, b in plan if e == 0 for i in b]
    assert sorted(epoch0) == list(range(len(train)))  # every pair once per epoch
    assert [len(m) for m in micro_batches([train[i] for i in plan[0][1]], 2)] == [4, 4]


def test_length_bucketed_schedule_keeps_groups_whole_and_pads_less():
    # 40 prompt groups of 3 pairs, group g's longest sequence has g % 10 * 10 + 5 tokens
    groups = [[3 * g, 3 * g + 1, 3 * g + 2] for g in range(40)]
    lengths = [g % 10 * 10 + 5 for g in range(40)]
    plain = schedule(groups, batch_size=6, seed=1, steps=20)
    bucketed = schedule(groups, batch_size=6, seed=1, steps=20, lengths=lengths, bucket_size=5)
    assert bucketed == schedule(groups, batch_size=6, seed=1, steps=20, lengths=lengths, bucket_size=5)  # pure
    assert schedule(groups, 6, 1, 20, lengths, bucket_size=1) == plain  # bucket_size 1: no bucketing
    assert sorted(i for _, b in bucketed for i in b) == list(range(120))  # 20 batches = one epoch, each pair once
    for _, batch in bucketed:
        assert {i // 3 for i in batch} == {i // 3 for i in batch if all(j in batch for j in groups[i // 3])}

    def padded(plan):  # tokens each batch pads to: pairs x its longest group
        return sum(len(b) * max(lengths[i // 3] for i in b) for _, b in plan)
    assert padded(bucketed) < 0.8 * padded(plain)


# ---------------------------------------------------------------------------------------------
# 3. Micro-batch invariance (STYLE practice 5)

TOL = 1e-5  # absolute, float32 on CPU


def _step(tok, pairs, micro: int) -> tuple[dict, list[torch.Tensor]]:
    model = new_rm(tok)
    cfg = RMConfig(batch_size=len(pairs), micro_batch_size=micro, grad_clip=0.0, label_smoothing=0.1)
    optimizer = adamw(model, 1e-3, 0.01, (0.9, 0.99))
    grads = []
    optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in model.parameters()))
    return train_step(model, optimizer, pairs, cfg, lr=1e-3), grads


def test_micro_batches_give_the_same_loss_and_gradients(tok):
    comparisons = synthetic_comparisons()
    # Groups of unequal size (4, 1, 3, 2 pairs), with margins, so a per-micro-batch mean would differ.
    chosen = comparisons[0:4] + comparisons[4:5] + comparisons[8:11] + comparisons[12:14]
    pairs, _ = encode_comparisons(tok, chosen, RMConfig(max_length=64, margin=True))
    ref, ref_grads = _step(tok, pairs, micro=len(pairs))
    assert ref["pairs"] == 10 and ref["sequences"] < 2 * 10  # shared responses scored once
    for micro in (3, 1):
        assert len(micro_batches(pairs, micro)) > 1
        out, grads = _step(tok, pairs, micro)
        for key in ("loss", "accuracy", "margin", "grad_norm"):
            assert out[key] == pytest.approx(ref[key], abs=TOL), key
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=TOL, rtol=0)
    # Control: the classic bug (a mean per micro-batch, averaged) is far off on these unequal groups.
    model = new_rm(tok)
    with torch.no_grad():
        means = []
        for micro in micro_batches(pairs, 3):
            r_a, r_b, _ = pair_rewards(model, collate_pairs(micro, model.pad_id))
            batch = collate_pairs(micro, model.pad_id)
            means.append(float(bradley_terry_loss(r_a, r_b, batch.target, batch.margin, 0.1).mean()))
    assert abs(sum(means) / len(means) - ref["loss"]) > 100 * TOL


# ---------------------------------------------------------------------------------------------
# 4. Normalisation and save/load


def test_normalisation_gives_mean_0_std_1_on_the_reference_set(tok):
    model = new_rm(tok)
    comparisons = synthetic_comparisons()[:12]
    pairs, _ = encode_comparisons(tok, comparisons, RMConfig(max_length=64))
    fit = normalise(model, pairs, batch_size=5)
    assert fit["sequences"] == 12  # 3 prompts x 4 distinct responses
    distinct = {(c.prompt, r) for c in comparisons for r in (c.response_a, c.response_b)}
    prompts, responses = zip(*sorted(distinct))
    z = model.score(list(prompts), list(responses))
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    raw = model.raw_scores([encode_pair(tok, p, r, 64)[0] for p, r in zip(prompts, responses)])
    torch.testing.assert_close(z, fit["gain"] * raw + fit["bias"], atol=1e-5, rtol=0)


def _roundtrip(model: RewardModel, folder: Path) -> RewardModel:
    model.set_normalisation(1.7, -0.3)
    model.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert {"reward_config.json", "config.json", "model.safetensors"} <= files
    assert ("reward_head.safetensors" in files) == (model.kind == "encoder")  # a classifier's head is its `score`
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    loaded = RewardModel.from_pretrained(folder)
    assert (loaded.kind, loaded.pool, float(loaded.gain), float(loaded.bias)) == (
        model.kind, model.pool, pytest.approx(1.7), pytest.approx(-0.3))
    prompts = ["Tell me about lakes.", "Tell me about towers.", "Tell me about roads."]
    responses = ["the splendid old bridge.", "quiet hill.", "the tall stone road by the harbour."]
    torch.testing.assert_close(loaded.score(prompts, responses), model.score(prompts, responses), atol=0, rtol=0)
    return loaded


def test_save_load_gives_identical_scores_causal(tok, tmp_path):
    loaded = _roundtrip(new_rm(tok, pool="mean", seed=2), tmp_path / "rm")
    assert loaded.kind == "causal" and loaded.max_length == 64
    config = json.loads((tmp_path / "rm" / "reward_config.json").read_text())
    assert config["normalisation"]["gain"] == pytest.approx(1.7)
    hf_config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForSequenceClassification"] and len(hf_config["id2label"]) == 1
    assert hf_config["reward_normalisation"] == config["normalisation"] == {"gain": pytest.approx(1.7),
                                                                            "bias": pytest.approx(-0.3)}
    weights = load_file(str(tmp_path / "rm" / "model.safetensors"))
    assert weights["score.weight"].shape == (1, 32) and not [k for k in weights if k.startswith(("head", "lm_head"))]


def test_from_backbone_reads_the_causal_lm_body(backbone_dir):
    model = RewardModel.from_backbone(str(backbone_dir), pool="last")
    assert model.kind == "causal" and type(model.backbone).__name__ == "LlamaForSequenceClassification"
    assert type(model.body).__name__ == "LlamaModel" and model.head is model.backbone.score
    assert model.head.bias is None and model.backbone.config.pad_token_id == model.tokenizer.pad_token_id
    lm = load_file(str(backbone_dir / "model.safetensors"))
    torch.testing.assert_close(model.body.embed_tokens.weight, lm["model.embed_tokens.weight"], atol=0, rtol=0)
    # tether's head init (Stiennon et al.): std 1/sqrt(33) ≈ 0.174, not transformers' 0.02
    assert float(model.head.weight.detach().std()) > 0.1
    with pytest.raises(Exception, match="pool: 'cls'"):
        RewardModel.from_backbone(str(backbone_dir), pool="cls")


def test_encoder_backbone_with_pair_encoding(tok, tmp_path):
    plain = copy.deepcopy(tok)
    plain.chat_template = None  # encoder tokenizers have none: pair encoding
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=128, pad_token_id=tok.pad_token_id))
    save_pretrained(bert, plain, str(tmp_path / "bert"))
    model = RewardModel.from_backbone(str(tmp_path / "bert"), pool="cls", max_length=64)
    assert model.kind == "encoder"
    assert encode_pair(plain, "Hi", "old road.", pair_encoding=True)[0] == plain("Hi", "old road.")["input_ids"]
    _roundtrip(model, tmp_path / "rm")


def test_sequence_classification_backbone(tok, tmp_path):
    config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1, **PRESETS["test"])
    torch.manual_seed(0)
    save_pretrained(LlamaForSequenceClassification(config), tok, str(tmp_path / "cls"))
    model = RewardModel.from_backbone(str(tmp_path / "cls"))
    assert model.kind == "seqcls" and model.head is model.backbone.score
    prompt, a, b = "Tell me about ports.", "the splendid harbour.", "a small stone road by the quiet river hill."
    torch.testing.assert_close(model.score([prompt, prompt], [a, b]), model.score([prompt, prompt], [a, b], 1),
                               atol=1e-5, rtol=0)  # HF's own last-non-pad pooling under right padding
    _roundtrip(model, tmp_path / "rm")


def test_the_stage_never_reads_the_gold_reward():
    for module in (rm, __import__("tether.reward", fromlist=["x"])):
        tree = ast.parse(Path(module.__file__).read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n and n.startswith("tether.world")], module.__name__


# ---------------------------------------------------------------------------------------------
# 5. Smoke run: learn the marker word; kill after a checkpoint, resume, same metrics


class Killed(Exception):
    pass


def _cfg(data, backbone, out, **kw) -> RMConfig:
    return RMConfig(data=str(data), model=str(backbone), out=str(out), max_steps=40, batch_size=8,
                    micro_batch_size=4, lr=1e-2, warmup_steps=3, eval_every=10, save_every=10, log_every=1,
                    eval_fraction=0.25, max_length=64, seed=0, **kw)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke(backbone_dir, tmp_path_factory):
    """Run A straight through 40 steps; run B killed right after its step-10 checkpoint, then resumed."""
    root = tmp_path_factory.mktemp("rm")
    data = root / "prefs.jsonl"
    write_comparisons(data, synthetic_comparisons())
    rm.run(_cfg(data, backbone_dir, root / "a"))

    real_save = training.save_checkpoint

    def save_then_die(run_dir, step, *args, **kw):
        real_save(run_dir, step, *args, **kw)
        raise Killed(step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            rm.run(_cfg(data, backbone_dir, root / "b"))
    partial = _metrics(root / "b")
    rm.run(_cfg(data, backbone_dir, root / "b", resume=True))
    return dict(a=root / "a", b=root / "b", partial=partial)


def test_smoke_learns_the_marker(smoke):
    rows = _metrics(smoke["a"])
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.1, (first, last)
    summary = json.loads((smoke["a"] / "eval.json").read_text())
    ev = summary["eval"]
    assert ev["pairs"] == 12 and ev["ties"] == 3  # 3 held-out prompts x 4, no prompt shared with training
    assert ev["accuracy"] > 0.8
    assert 0 <= ev["ece"] <= 1 and -1 <= ev["length_corr"] <= 1
    assert summary["data"]["eval_prompts_in_train"] == 0 and summary["normalisation"]["sequences"] == 44
    model = RewardModel.from_pretrained(smoke["a"] / "model")
    prompt = "Tell me about gardens."  # a prompt never seen
    good, bad = model.score([prompt, prompt], ["the old splendid bridge.", "the old stone bridge."])
    assert good > bad


def test_resumed_run_equals_an_uninterrupted_one(smoke):
    assert [r["step"] for r in smoke["partial"]] == list(range(1, 11))
    a, b = _metrics(smoke["a"]), _metrics(smoke["b"])
    assert len(a) == len(b) == 40
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-6), (row_a["step"], key)
    final_a = load_file(str(smoke["a"] / "model" / "model.safetensors"))
    final_b = load_file(str(smoke["b"] / "model" / "model.safetensors"))
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], atol=1e-6, rtol=0)
    ev_a = json.loads((smoke["a"] / "eval.json").read_text())["eval"]
    ev_b = json.loads((smoke["b"] / "eval.json").read_text())["eval"]
    assert ev_b == pytest.approx(ev_a, abs=1e-6)


def test_ece_does_not_depend_on_which_response_is_called_a():
    """A calibrated model (P(A wins) = σ(d)) keeps a small ECE when every pair is written chosen-first,
    as HH and TRL files are; one-sided binning would report 1 - mean confidence instead."""
    from tether.math.rm_metrics import expected_calibration_error
    from tether.stages.rm import _symmetric_ece

    g = torch.Generator().manual_seed(0)
    d = torch.randn(20000, generator=g, dtype=torch.float64) * 2
    a_wins = torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(d)
    p_chosen_first = torch.where(a_wins, torch.sigmoid(d), torch.sigmoid(-d))  # the chosen response moved to A
    labels = torch.ones_like(p_chosen_first)
    assert float(_symmetric_ece(p_chosen_first, labels)) < 0.02
    assert float(expected_calibration_error(p_chosen_first, labels)) > 0.2  # the old, orientation-bound value


# ---------------------------------------------------------------------------------------------
# 5. center_rewards_coefficient (Eisenstein et al. 2023; TRL's RewardTrainer)


def test_center_rewards_coefficient_adds_c_times_the_mean_squared_sum(tok):
    pairs, _ = encode_comparisons(tok, synthetic_comparisons()[:8], RMConfig(max_length=64))
    model = new_rm(tok)
    with torch.no_grad():
        r_a, r_b, _ = pair_rewards(model, collate_pairs(pairs, model.pad_id))
        batch = collate_pairs(pairs, model.pad_id)
    plain = float(bradley_terry_loss(r_a, r_b, batch.target, batch.margin).mean())
    centre = float(((r_a + r_b) ** 2).mean())  # TRL: mean((r_chosen + r_rejected)²); the order within a pair is moot
    cfg = RMConfig(batch_size=len(pairs), micro_batch_size=3, grad_clip=0.0, center_rewards_coefficient=0.5)
    out = train_step(model, adamw(model, 1e-3, 0.0, (0.9, 0.99)), pairs, cfg, lr=1e-3)
    assert out["loss"] == pytest.approx(plain + 0.5 * centre, abs=TOL)
    assert out["center_penalty"] == pytest.approx(centre, abs=TOL) and centre > 0.01
    off = train_step(new_rm(tok), adamw(new_rm(tok), 1e-3, 0.0, (0.9, 0.99)), pairs,
                     dataclasses.replace(cfg, center_rewards_coefficient=None), lr=1e-3)
    assert off["loss"] == pytest.approx(plain, abs=TOL) and off["center_penalty"] == pytest.approx(centre, abs=TOL)


def test_center_rewards_coefficient_from_the_cli_pulls_the_rewards_to_zero(backbone_dir, tmp_path):
    from tether.cli import main

    data = tmp_path / "prefs.jsonl"
    write_comparisons(data, synthetic_comparisons())
    common = [f"data={data}", f"model={backbone_dir}", "max_steps=8", "batch_size=8", "micro_batch_size=4",
              "lr=1e-2", "eval_fraction=0.25", "max_length=64", "eval_every=0", "save_every=0", "log_every=1"]
    assert main(["rm", *common, f"out={tmp_path / 'off'}"]) == 0
    assert main(["rm", *common, f"out={tmp_path / 'on'}", "center_rewards_coefficient=1.0"]) == 0
    off, on = _metrics(tmp_path / "off"), _metrics(tmp_path / "on")
    assert all("center_penalty" in r for r in on + off)
    assert "center_rewards_coefficient: 1.0" in (tmp_path / "on" / "config.yaml").read_text()
    # Same first batch, same start: the penalty only starts to differ after the first update, and ends far lower.
    assert on[0]["center_penalty"] == pytest.approx(off[0]["center_penalty"], abs=1e-6)
    assert on[-1]["center_penalty"] < 0.5 * off[-1]["center_penalty"], (on[-1], off[-1])

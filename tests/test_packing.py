"""tether.packing: padding-free SFT batches give the padded batch's loss and gradients on the real architectures
(tests/archkit.py), each conversation attending only to itself."""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

import archkit
from tether.errors import ConfigError
from tether.math.losses import IGNORE_INDEX
from tether.models import save_pretrained
from tether.packing import PACKABLE, check_packable, collate_packed, pack_rows
from tether.stages.lm import batch_loss, train_step
from tether.stages.sft import SFTConfig
from tether.stages.sft import run as run_sft
from tether.training import Example, TrainConfig, collate

PACKED_ARCHS = sorted(a for a in archkit.ARCHITECTURES if a != "opt")
ATOL = 1e-5
# Longer than the sliding window (64) of gemma2, gemma3 and mistral: packed after a 70-token conversation, the
# 90-token one slides by its own positions or the test fails. Two assistant turns each, a user turn between.
LENGTHS = (70, 22, 90, 5, 41)


def conversations(vocab: int, lengths=LENGTHS, seed: int = 2) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        head = min(4, n - 1)  # the prompt; a 5-token conversation is a 4-token prompt and a 1-token reply
        mask = [0] * head + [1] * (n - head) if n < 20 else [0] * 4 + [1] * 6 + [0] * 7 + [1] * (n - 17)
        out.append(Example(ids, mask))
    return out


def loss_and_grads(model, batch, response_only: bool = True) -> tuple[float, int, dict]:
    model.zero_grad()
    nll, count = batch_loss(model, batch, response_only)
    (nll / count).backward()  # the per-token mean over the batch's assistant tokens, as train_step divides
    return float(nll.detach()) / int(count), int(count), {n: p.grad.clone() for n, p in model.named_parameters()
                                                         if p.grad is not None}


# ---------------------------------------------------------------------------------------------
# 1. The rows


def test_pack_rows_first_fit_decreasing():
    # lengths 70, 22, 90, 5, 41 into rows of 100: 90 -> row 0 (10 left); 70 -> row 1 (30 left); 41 -> row 2
    # (59 left); 22 -> row 1 (8 left); 5 -> row 0 (5 left).
    assert pack_rows(list(LENGTHS), 100) == [[2, 3], [0, 1], [4]]
    assert pack_rows(list(LENGTHS), 0) == [[0, 1, 2, 3, 4]]  # one row, in order
    assert pack_rows([300, 10], 100) == [[0], [1]]  # a sequence longer than the budget gets a row of its own
    assert pack_rows([30, 30, 30], 1000) == [[0, 1, 2]]


def test_collate_packed_positions_restart_and_labels_stop_at_each_boundary():
    a, b = Example([5, 6, 7], [0, 1, 1]), Example([8, 9], [0, 1])
    batch = collate_packed([a, b], pad_id=0)
    assert set(batch) == {"input_ids", "position_ids", "labels"}  # no attention mask: the positions say it all
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # position 2 (token 7, a's last) predicts nothing: b's first token 8 is never a target of a's context
    assert batch["labels"].tolist() == [[6, 7, IGNORE_INDEX, 9, IGNORE_INDEX]]
    rows = collate_packed([a, b, Example([4], [0])], pad_id=0, row_tokens=3)  # rows [a], [b, c]
    assert rows["input_ids"].tolist() == [[5, 6, 7], [8, 9, 4]]
    two = collate_packed([a, b], pad_id=1, row_tokens=3)  # rows [a], [b] + one pad, at position 0
    assert two["input_ids"].tolist() == [[5, 6, 7], [8, 9, 1]] and two["position_ids"].tolist() == [[0, 1, 2],
                                                                                                    [0, 1, 0]]
    assert two["labels"][1].tolist() == [9, IGNORE_INDEX, IGNORE_INDEX]


# ---------------------------------------------------------------------------------------------
# 2. Equal to the padded batch, architecture by architecture


@pytest.mark.parametrize("row_tokens", [0, 100], ids=["one-row", "rows-of-100"])
@pytest.mark.parametrize("arch", PACKED_ARCHS)
def test_packed_loss_and_gradients_equal_the_padded_ones(arch, row_tokens, real_root):
    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    assert model.config.model_type in PACKABLE
    check_packable(model)
    examples = conversations(model.config.vocab_size)
    loss, count, grads = loss_and_grads(model, collate(examples, 0))
    packed = collate_packed(examples, 0, row_tokens)
    assert packed["input_ids"].numel() == (sum(LENGTHS) if row_tokens == 0 else 3 * 95)  # rows of 95, 92, 41
    loss_p, count_p, grads_p = loss_and_grads(model, packed)
    assert count_p == count == sum(sum(e.loss_mask[1:]) for e in examples)
    assert loss_p == pytest.approx(loss, abs=ATOL, rel=0)
    assert grads_p.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_p[name], g, atol=ATOL, rtol=ATOL, msg=name)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: the logit softcap in the model's own forward
def test_packed_equals_padded_with_the_models_own_logits(arch, real_root):
    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    examples = conversations(model.config.vocab_size)
    loss, _, grads = loss_and_grads(model, collate(examples, 0), response_only=False)
    loss_p, _, grads_p = loss_and_grads(model, collate_packed(examples, 0), response_only=False)
    assert loss_p == pytest.approx(loss, abs=ATOL, rel=0)
    for name, g in grads.items():
        torch.testing.assert_close(grads_p[name], g, atol=ATOL, rtol=ATOL, msg=name)


@pytest.mark.parametrize("arch", PACKED_ARCHS)
def test_a_conversations_logits_ignore_the_others_in_its_row(arch, real_root):
    """Perturb every token of the conversations before and after the third one in the row: its logits stay put."""
    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    examples = conversations(model.config.vocab_size)
    vocab = model.config.vocab_size
    changed = [Example([(t * 7 + 11) % (vocab - 3) + 3 for t in e.input_ids], e.loss_mask) if i != 2 else e
               for i, e in enumerate(examples)]
    at = slice(70 + 22, 70 + 22 + 90)  # the 90-token conversation's place in the one row

    def logits(exs):
        batch = collate_packed(exs, 0)
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits

    before, after = logits(examples), logits(changed)
    torch.testing.assert_close(after[0, at], before[0, at], atol=ATOL, rtol=0)
    assert not torch.allclose(after[0, at.stop:], before[0, at.stop:], atol=10 * ATOL)  # the others did change
    alone = model(input_ids=torch.tensor([examples[2].input_ids])).logits  # (1, 90, V), run by itself
    torch.testing.assert_close(before[0, at], alone[0].detach(), atol=ATOL, rtol=0)


def test_the_equality_test_can_fail(real_root):
    """One row with positions running on (no restart), or with the model's cache on, mixes the conversations."""
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root)).eval()
    examples = conversations(model.config.vocab_size)
    loss, _, _ = loss_and_grads(model, collate(examples, 0))
    packed = collate_packed(examples, 0)
    running = {**packed, "position_ids": torch.arange(packed["input_ids"].size(1))[None]}
    assert abs(loss_and_grads(model, running)[0] - loss) > 10 * ATOL
    with torch.no_grad():  # the cache on: transformers skips the packed-sequence mask and attends across
        cached = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True).logits
        uncached = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    assert not torch.allclose(cached, uncached, atol=10 * ATOL)


def test_opt_is_refused_and_would_mix_conversations(real_root):
    model = archkit.build_model("opt", archkit.tokenizer("base", real_root)).eval()
    with pytest.raises(ConfigError, match=r"^padding_free: model type opt .*use padding_free=false$"):
        check_packable(model)
    examples = conversations(model.config.vocab_size)
    loss, _, _ = loss_and_grads(model, collate(examples, 0))
    assert abs(loss_and_grads(model, collate_packed(examples, 0))[0] - loss) > 10 * ATOL  # why it is refused


def test_an_unverified_attention_implementation_is_refused(real_root):
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root))
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="attention implementation flex_attention"):
        check_packable(model)
    model.config._attn_implementation = "eager"
    check_packable(model)


def test_eager_attention_packs_too(real_root):
    model = archkit.build_model("qwen2", archkit.tokenizer("base", real_root)).eval()
    model.config._attn_implementation = "eager"
    examples = conversations(model.config.vocab_size)
    loss, _, _ = loss_and_grads(model, collate(examples, 0))
    assert loss_and_grads(model, collate_packed(examples, 0))[0] == pytest.approx(loss, abs=ATOL, rel=0)


# ---------------------------------------------------------------------------------------------
# 3. The training step and the stage


def test_train_step_packed_equals_padded_with_accumulation(real_root):
    """Two micro-batches of different token counts: each packed sum is divided by the step's count, as padded."""
    tok = archkit.tokenizer("base", real_root)
    cfg = TrainConfig(batch_size=4, micro_batch_size=2, grad_clip=0.0)
    examples = conversations(len(tok), (70, 22, 90, 5))
    out = {}
    for name, batches in (("padded", collate), ("packed", collate_packed)):
        model = archkit.build_model("gemma2", tok)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        row = train_step(model, opt, examples, cfg, 0, 1.0, batches=batches)
        out[name] = row, {n: p.detach().clone() for n, p in model.named_parameters()}
    (row, weights), (row_p, weights_p) = out["padded"], out["packed"]
    assert row_p["tokens"] == row["tokens"] == 70 + 22 + 90 + 5
    assert row_p["loss"] == pytest.approx(row["loss"], abs=ATOL, rel=0)
    assert row_p["grad_norm"] == pytest.approx(row["grad_norm"], abs=ATOL, rel=ATOL)
    for name, w in weights.items():
        torch.testing.assert_close(weights_p[name], w, atol=ATOL, rtol=0, msg=name)


@pytest.fixture(scope="module")
def llama_dir(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama")
    save_pretrained(archkit.build_model("llama", tokenizer), tokenizer, str(out))
    return out


def test_sft_stage_padding_free_equals_padded(llama_dir, world_dir, tmp_path):
    """Two SFT steps and an eval through the stage: the same losses and final weights, packed or padded."""
    def sft(out, **packing):
        run_sft(SFTConfig(data=str(world_dir / "sft.jsonl"), model=str(llama_dir), out=str(tmp_path / out),
                          max_steps=2, batch_size=4, micro_batch_size=2, warmup_steps=1, eval_fraction=0.1,
                          log_every=1, save_every=0, **packing))
        rows = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        weights = load_file(str(tmp_path / out / "model" / "model.safetensors"))
        return [r["loss"] for r in rows] + [rows[-1]["eval_loss"]], [r["tokens"] for r in rows], weights

    losses, tokens, weights = sft("padded")
    for name, packing in (("one-row", {}), ("rows", {"pack_tokens": 64})):
        losses_p, tokens_p, weights_p = sft(name, padding_free=True, **packing)
        assert len(losses_p) == 3 and losses_p == pytest.approx(losses, abs=ATOL) and tokens_p == tokens
        for key, w in weights.items():
            torch.testing.assert_close(weights_p[key], w, atol=ATOL, rtol=0, msg=key)


def test_sft_settings_are_validated():
    with pytest.raises(ConfigError, match="pack_tokens"):
        SFTConfig(pack_tokens=-1, padding_free=True).validate()
    with pytest.raises(ConfigError, match="pack_tokens: only applies with padding_free=true"):
        SFTConfig(pack_tokens=256).validate()
    SFTConfig(padding_free=True, pack_tokens=256).validate()


def test_sft_refuses_padding_free_on_opt(tokenizer, world_dir, tmp_path):
    folder = tmp_path / "opt"
    save_pretrained(archkit.build_model("opt", tokenizer), tokenizer, str(folder))
    cfg = SFTConfig(data=str(world_dir / "sft.jsonl"), model=str(folder), out=str(tmp_path / "run"), max_steps=1,
                    batch_size=2, micro_batch_size=2, padding_free=True)
    with pytest.raises(ConfigError, match="padding_free: model type opt"):
        run_sft(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any training

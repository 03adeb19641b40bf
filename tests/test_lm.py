"""tether.stages.lm: the assistant-only SFT loss, batch-splitting invariance, length-bucketed batches,
resuming step for step after a kill, and checkpoints that plain transformers loads."""
from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tether.training as training
from tether.checkpoint import (
    COMPLETE,
    complete_checkpoints,
    latest_checkpoint,
    load_trainer_state,
)
from tether.data.sft_data import read_conversations
from tether.math.losses import IGNORE_INDEX, token_nll_sum
from tether.optim import adamw
from tether.stages.lm import batch_loss, train_lm, train_step
from tether.training import Example, TrainConfig, collate, epoch_batches
from tether.chat import chat_format

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of Norland?"},
    {"role": "assistant", "content": "Osk."},
    {"role": "user", "content": "And its currency?"},
    {"role": "assistant", "content": "The florin."},
]


@pytest.fixture(scope="module")
def sft_examples(world_dir, tokenizer):
    """The tiny world's 60 SFT demos as masked examples (lengths differ, so padding differs)."""
    chats = chat_format(tokenizer).encode_many([(c, None) for c in read_conversations(world_dir / "sft.jsonl")])
    return [Example(c.input_ids, c.loss_mask) for c in chats]


# ---------------------------------------------------------------------------------------------
# 1. The SFT loss counts assistant tokens only


def _assistant_target_positions(tokenizer) -> tuple[list[int], list[int]]:
    """Positions t whose NEXT token (t + 1) is an assistant token, derived from the layout by hand.

    Layout: <bos> <|system|> S <|user|> U1 <|assistant|> A1 <eos> <|user|> U2 <|assistant|> A2 <eos>.
    Targets are A1 + <eos> and A2 + <eos>, so the predicting positions run from each <|assistant|>
    marker up to the last content token of that turn. Also returns the positions of user content.
    """
    n = [len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in CONVERSATION]
    s, u1, a1, u2, a2 = n
    marker1 = 1 + 1 + s + 1 + u1  # index of the first <|assistant|>
    marker2 = marker1 + 1 + a1 + 1 + 1 + u2  # after A1, <eos>, <|user|>, U2
    positions = [*range(marker1, marker1 + a1 + 1), *range(marker2, marker2 + a2 + 1)]
    user1 = list(range(1 + 1 + s + 1, 1 + 1 + s + 1 + u1))
    user2 = list(range(marker1 + a1 + 3, marker1 + a1 + 3 + u2))
    return positions, user1 + user2


def test_sft_loss_is_the_nll_of_exactly_the_assistant_tokens(tokenizer, new_model):
    enc = chat_format(tokenizer).encode(CONVERSATION)
    ids = enc.input_ids
    positions, _ = _assistant_target_positions(tokenizer)
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    eos = tokenizer.eos_token_id
    # The hand layout agrees with the encoding: each span starts at a marker and ends before an <eos>.
    assert [ids[p] for p in positions if ids[p] == assistant] == [assistant, assistant]
    assert ids[positions[-1] + 1] == eos and len(ids) == positions[-1] + 2
    assert sum(enc.loss_mask) == len(positions)

    model = new_model()
    # A shorter second row makes collate pad the first: padding must add nothing.
    short = chat_format(tokenizer).encode(CONVERSATION[1:3])
    batch = collate([Example(ids, enc.loss_mask), Example(short.input_ids, short.loss_mask)], tokenizer.pad_token_id)
    with torch.no_grad():
        # Row 0 alone, so the manual sum below covers everything that row contributes.
        nll_0, count_0 = batch_loss(model, collate([Example(ids, enc.loss_mask)], tokenizer.pad_token_id))
        nll_both, count_both = batch_loss(model, batch)
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)  # (T, V)
        manual = -sum(float(logp[t, ids[t + 1]]) for t in positions)
    assert int(count_0) == len(positions)
    assert float(nll_0) == pytest.approx(manual, abs=1e-4)
    # Row 1 (user, assistant "Osk.") adds its own assistant tokens; padding adds none.
    assert int(count_both) == len(positions) + sum(short.loss_mask)
    labels = batch["labels"]
    assert labels[0].ne(IGNORE_INDEX).nonzero().flatten().tolist() == positions
    assert labels[0, positions].tolist() == [ids[p + 1] for p in positions]
    assert labels[1, len(short.input_ids) - 1:].eq(IGNORE_INDEX).all()  # last real token and the padding


def test_logits_only_from_the_first_counted_position(tokenizer, new_model):
    # Two conversations whose prompts differ in length: logits start at the earlier first assistant token.
    rows = [chat_format(tokenizer).encode(CONVERSATION), chat_format(tokenizer).encode(CONVERSATION[1:3])]
    batch = collate([Example(r.input_ids, r.loss_mask) for r in rows], tokenizer.pad_token_id)
    first = min(int(r.ne(IGNORE_INDEX).nonzero()[0]) for r in batch["labels"])
    assert first > 0
    model, widths = new_model(), []
    model.lm_head.register_forward_hook(lambda m, inputs, out: widths.append(inputs[0].size(1)))

    def loss_and_grads(fn):
        model.zero_grad()
        nll, n = fn()
        nll.backward()
        return [nll.detach(), n] + [p.grad.clone() for p in model.parameters()]

    cut = loss_and_grads(lambda: batch_loss(model, batch, response_only=False))  # the logits_to_keep path
    full = loss_and_grads(lambda: token_nll_sum(model(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"]).logits, batch["labels"]))
    assert widths == [batch["input_ids"].size(1) - first, batch["input_ids"].size(1)]
    for a, b in zip(cut, full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_changing_a_user_token_never_changes_the_counted_tokens(tokenizer):
    enc = chat_format(tokenizer).encode(CONVERSATION)
    positions, user_positions = _assistant_target_positions(tokenizer)
    assert len(user_positions) >= 6
    rng = random.Random(0)
    base = collate([Example(enc.input_ids, enc.loss_mask)], tokenizer.pad_token_id)["labels"]
    for p in user_positions:
        ids = list(enc.input_ids)
        ids[p] = rng.choice([i for i in range(6, len(tokenizer)) if i != ids[p]])
        labels = collate([Example(ids, enc.loss_mask)], tokenizer.pad_token_id)["labels"]
        assert int(labels.ne(IGNORE_INDEX).sum()) == len(positions)
        assert torch.equal(labels, base)  # the user token was never a target
    # Control: changing an assistant token does change a target.
    ids = list(enc.input_ids)
    ids[positions[1]] = 7 if ids[positions[1]] != 7 else 8
    labels = collate([Example(ids, enc.loss_mask)], tokenizer.pad_token_id)["labels"]
    assert not torch.equal(labels, base)


# ---------------------------------------------------------------------------------------------
# 2. Batch-splitting invariance (STYLE practice 5)

TOL = 1e-5  # absolute, float32 on CPU: the split only reorders sums of ~1e3 terms


def _step(model, examples, micro: int, tokenizer) -> tuple[dict, list[torch.Tensor], list[torch.Tensor]]:
    """train_step with `micro`-sized micro-batches; (metrics, gradients before the step, parameters after)."""
    cfg = TrainConfig(batch_size=8, micro_batch_size=micro, grad_clip=0.0)
    optimizer = adamw(model, 1e-3, 0.01, (0.9, 0.99))
    grads = []
    optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in model.parameters()))
    out = train_step(model, optimizer, examples, cfg, tokenizer.pad_token_id, lr=1e-3)
    return out, grads, [p.detach().clone() for p in model.parameters()]


def test_micro_batches_give_the_same_loss_gradients_and_step(sft_examples, tokenizer, new_model):
    # 8 examples of different lengths (and so different assistant-token counts and padding per split).
    examples = sorted(sft_examples, key=lambda e: len(e.input_ids))[::7][:8]
    assert len(examples) == 8 and len({len(e.input_ids) for e in examples}) >= 6
    ref_out, ref_grads, ref_params = _step(new_model(), examples, 8, tokenizer)
    for micro in (4, 2):
        out, grads, params = _step(new_model(), examples, micro, tokenizer)
        assert out["loss"] == pytest.approx(ref_out["loss"], abs=TOL)
        assert out["grad_norm"] == pytest.approx(ref_out["grad_norm"], abs=TOL)
        assert out["tokens"] == ref_out["tokens"] == sum(len(e.input_ids) for e in examples)
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, atol=TOL, rtol=0)
        for p, ref in zip(params, ref_params):
            torch.testing.assert_close(p, ref, atol=TOL, rtol=0)


@torch.no_grad()
def test_averaging_per_micro_batch_would_break_invariance(sft_examples, tokenizer, new_model):
    """The examples above are unequal enough that the classic bug (mean per micro-batch) shows."""
    examples = sorted(sft_examples, key=lambda e: len(e.input_ids))[::7][:8]
    model = new_model()
    nll, n = batch_loss(model, collate(examples, tokenizer.pad_token_id))
    ref = float(nll / n)
    naive = 0.0
    for i in range(0, 8, 2):
        nll, n = batch_loss(model, collate(examples[i:i + 2], tokenizer.pad_token_id))
        naive += float(nll / n) / 4
    assert abs(naive - ref) > 100 * TOL


# ---------------------------------------------------------------------------------------------
# 3. Length-bucketed batches


def test_epoch_batches_are_pure_full_and_disjoint():
    rng = random.Random(1)
    lengths = [rng.randint(1, 500) for _ in range(203)]
    # window = 8 * 4 = 32: 6 full windows of 4 batches, then 11 left -> one batch, 3 indices dropped.
    a = epoch_batches(lengths, batch_size=8, bucket_size=4, seed=3, epoch=2)
    assert a == epoch_batches(lengths, batch_size=8, bucket_size=4, seed=3, epoch=2)
    assert len(a) == 25 == len(lengths) // 8
    assert all(len(b) == 8 for b in a)
    flat = [i for b in a for i in b]
    assert len(flat) == len(set(flat)) == 200
    assert a != epoch_batches(lengths, 8, 4, seed=3, epoch=3)
    assert a != epoch_batches(lengths, 8, 4, seed=4, epoch=2)


def test_epoch_batches_group_similar_lengths():
    rng = random.Random(2)
    lengths = rng.sample(range(1, 501), 256)  # distinct, so the length order has no ties

    def spread(batches):  # mean (longest - shortest) per batch
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    bucketed = epoch_batches(lengths, batch_size=8, bucket_size=4, seed=0, epoch=0)
    order = list(range(256))
    rng.shuffle(order)
    unbucketed = [order[i:i + 8] for i in range(0, 256, 8)]
    # Random batches of 8 from 1..500 span ~7/9 of the range (~390); sorted windows of 32 cut into
    # 4 batches span ~1/4 of the window's range (~120).
    assert spread(bucketed) < 0.5 * spread(unbucketed)
    # One window holding everything: the batches are exactly consecutive slices of the length order.
    whole = epoch_batches(lengths, batch_size=8, bucket_size=32, seed=0, epoch=0)
    by_length = sorted(range(256), key=lambda i: lengths[i])
    assert sorted(map(sorted, whole)) == sorted(sorted(by_length[i:i + 8]) for i in range(0, 256, 8))


# ---------------------------------------------------------------------------------------------
# 4. Resume after a kill, and checkpoints as plain HF folders


class Killed(Exception):
    pass


COMPARED = ("step", "epoch", "loss", "grad_norm", "lr", "tokens", "eval_loss")  # not tokens_per_s (wall clock)


def _cfg(out, **kw) -> TrainConfig:
    return TrainConfig(out=str(out), max_steps=6, save_every=3, log_every=1, eval_every=2, eval_fraction=0.1,
                       batch_size=8, micro_batch_size=4, warmup_steps=2, lr=3e-3, seed=5, **kw)


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in COMPARED if k in r} for r in rows]


@pytest.fixture(scope="module")
def resumed(sft_examples, tokenizer, tmp_path_factory):
    """Run A straight through; run B killed right after the step-3 checkpoint, then resumed."""
    from tether.models import build_model

    root = tmp_path_factory.mktemp("resume")
    model_a = build_model("test", tokenizer, seed=0)
    train_lm(_cfg(root / "a"), model_a, tokenizer, sft_examples, "sft")

    real_save, at_kill = training.save_checkpoint, {}

    def save_then_die(run_dir, step, model, *args, **kw):
        real_save(run_dir, step, model, *args, **kw)
        at_kill.update(step=step, weights={k: v.clone() for k, v in model.state_dict().items()})
        raise Killed(step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train_lm(_cfg(root / "b"), build_model("test", tokenizer, seed=0), tokenizer, sft_examples, "sft")
    b = root / "b"
    partial = _metrics(b)
    # A checkpoint whose COMPLETE marker was never written (killed mid-save) must be ignored.
    shutil.copytree(b / "checkpoints" / "step-000003", b / "checkpoints" / "step-000005")
    (b / "checkpoints" / "step-000005" / COMPLETE).unlink()
    # A fresh process would build a fresh model: resume must restore everything that matters.
    model_b = build_model("test", tokenizer, seed=1)
    train_lm(_cfg(b, resume=True), model_b, tokenizer, sft_examples, "sft")
    return dict(a=root / "a", b=b, model_a=model_a, model_b=model_b, partial=partial, at_kill=at_kill)


def test_killed_run_stopped_after_step_3(resumed):
    assert resumed["at_kill"]["step"] == 3
    assert [r["step"] for r in resumed["partial"]] == [1, 2, 3]


def test_incomplete_checkpoint_is_ignored(resumed):
    b = resumed["b"]
    assert (b / "checkpoints" / "step-000005").is_dir()
    assert latest_checkpoint(b) == b / "checkpoints" / "step-000003"
    assert complete_checkpoints(b) == [b / "checkpoints" / "step-000003"]
    assert load_trainer_state(latest_checkpoint(b))["step"] == 3


def test_resumed_metrics_equal_an_uninterrupted_run(resumed):
    a, b = _metrics(resumed["a"]), _metrics(resumed["b"])
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]  # log_every=1, each step exactly once
    assert [("eval_loss" in r) for r in a] == [False, True, False, True, False, True]
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-6), (row_a["step"], key)


def test_resumed_final_weights_equal(resumed):
    final_a = load_file(str(resumed["a"] / "model" / "model.safetensors"))
    final_b = load_file(str(resumed["b"] / "model" / "model.safetensors"))
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], atol=1e-6, rtol=0)
    for (name, pa), pb in zip(resumed["model_a"].named_parameters(), resumed["model_b"].parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-6, rtol=0, msg=name)


def test_checkpoint_is_a_plain_hf_folder(resumed, tokenizer):
    ckpt = resumed["b"] / "checkpoints" / "step-000003"
    files = {p.name for p in ckpt.iterdir()}
    assert "model.safetensors" in files and COMPLETE in files
    # The only non-safetensors tensor file is the trainer state, read with weights_only=True.
    assert {f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))} == {"trainer_state.pt"}
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    state = model.state_dict()
    for key, value in resumed["at_kill"]["weights"].items():
        torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=key)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False)
    final = resumed["a"] / "model"
    assert not [p for p in final.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == len(tokenizer)


def test_resume_says_from_which_checkpoint_or_that_there_is_none(resumed, tmp_path, capsys):
    from tether.training import checkpoint_to_resume

    b = resumed["b"]
    assert checkpoint_to_resume(_cfg(b, resume=True), b) == b / "checkpoints" / "step-000003"  # step 5: incomplete
    assert f"resume: from {b / 'checkpoints' / 'step-000003'} (step 3)" in capsys.readouterr().err
    assert checkpoint_to_resume(_cfg(tmp_path, resume=True), tmp_path) is None
    assert f"resume: no complete checkpoint in {tmp_path / 'checkpoints'}; starting at step 0" in capsys.readouterr().err
    assert checkpoint_to_resume(_cfg(tmp_path), tmp_path) is None and capsys.readouterr().err == ""  # not asked

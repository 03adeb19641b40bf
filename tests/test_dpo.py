"""tether.stages.dpo (the pair losses): data checks, masks, the cached reference, micro-batch invariance, resume,
and a smoke run of every loss on a "test"-preset model."""
from __future__ import annotations

import json
import typing

import pytest
import torch
from safetensors.torch import load_file

import tether.stages.dpo as dpo
import tether.stages.dpo.pairs as pairs
import tether.training as training
from tether.chat import chat_format
from tether.data.preferences import read_labelled
from tether.math.dpo_losses import DPO_LOSSES, REFERENCE_FREE, UNPAIRED_LOSSES
from tether.errors import ConfigError, DataError
from tether.models import load_policy
from tether.optim import adamw
from tether.stages.dpo import DPOConfig
from tether.stages.dpo.pairs import (
    Pair,
    encode_comparisons,
    forward_pairs,
    reference_logps,
    train_step,
)
from tether.stages.dpo.sequences import CACHE, encode_responses


def _rows(n: int = 24) -> list[dict]:
    """n labelled comparisons over 8 prompts (3 each); the good answer is A on even rows, B on odd ones."""
    rows = []
    for i in range(n):
        good, bad = f"The capital of land {i % 8} is Osk {i % 8}.", "I do not know." + " Sorry." * (i % 3)
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"prompt": f"What is the capital of land {i % 8}?", "response_a": a, "response_b": b,
                     "choice": "A" if i % 2 == 0 else "B", "rater": f"r{i % 2}"})
    return rows


def _write(path, rows, blank_lines: tuple[int, ...] = ()) -> str:
    lines = [json.dumps(r) for r in rows]
    for at in blank_lines:
        lines.insert(at, "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cfg(tmp_path, data, model_dir, **kw) -> DPOConfig:
    base = dict(data=str(data), model=str(model_dir), out=str(tmp_path / "run"), batch_size=4, micro_batch_size=2,
                max_steps=3, eval_fraction=0.25, eval_every=3, log_every=1, save_every=0, warmup_steps=1, lr=1e-2,
                max_length=64)
    cfg = DPOConfig(**{**base, **kw})
    cfg.validate()
    return cfg


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # wall clock differs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return _write(tmp_path_factory.mktemp("dpo_data") / "prefs.jsonl", _rows())


def test_loss_field_lists_exactly_the_losses():
    assert set(typing.get_args(typing.get_type_hints(DPOConfig)["loss"])) == set(DPO_LOSSES) | set(UNPAIRED_LOSSES)


# ---------------------------------------------------------------------------------------------
# 1. Data: errors name file and line; ties, truncation and masks


@pytest.mark.parametrize("bad, message", [
    ({"response_a": "  "}, r"prefs\.jsonl:4: response_a: empty or whitespace-only"),
    ({"response_b": "The capital of land 2 is Osk 2. "}, r"prefs\.jsonl:4: response_b: identical to response_a"),
    ({"choice": None}, r"prefs\.jsonl:4: choice: null \(an unrated queue item; 1 in the file\)"),
])
def test_bad_rows_fail_before_any_model_work(tmp_path, bad, message):
    rows = _rows(6)
    rows[2].update(bad)  # row 3, written on line 4 after a blank line
    path = _write(tmp_path / "prefs.jsonl", rows, blank_lines=(1,))
    cfg = _cfg(tmp_path, path, tmp_path / "no-such-model")  # the model is never reached
    with pytest.raises(DataError, match=message):
        dpo.run(cfg)


def test_ties_dropped_and_counted_except_for_ipo(tokenizer, tmp_path):
    rows = _rows(6)
    rows[1]["choice"] = rows[4]["choice"] = "tie"
    comparisons = read_labelled(_write(tmp_path / "p.jsonl", rows))
    pairs, report = encode_comparisons(chat_format(tokenizer), comparisons, DPOConfig(loss="sigmoid"))
    assert (report["ties"], report["ties_dropped"], report["pairs"]) == (2, 2, 4)
    assert not any(p.tie for p in pairs)
    pairs, report = encode_comparisons(chat_format(tokenizer), comparisons, DPOConfig(loss="ipo"))
    assert (report["ties"], report["ties_dropped"], report["pairs"]) == (2, 0, 6)
    assert [p.tie for p in pairs] == [False, True, False, False, True, False]


def test_prompts_are_cut_and_pairs_dropped_only_when_a_response_alone_is_too_long(tokenizer, tmp_path):
    rows = _rows(4)
    rows[0]["response_a"] = "The capital is Osk. " * 40  # one response alone runs past max_length: dropped
    rows[1]["prompt"] = "Tell me about the capital, please. " * 40  # a long prompt: its start is cut
    comparisons = read_labelled(_write(tmp_path / "p.jsonl", rows))
    pairs, report = encode_comparisons(chat_format(tokenizer), comparisons, DPOConfig(max_length=48))
    assert (report["truncated_pairs"], report["dropped_response_too_long"], report["pairs"]) == (1, 1, 3)
    cut = pairs[0]  # rows[1]: both responses whole after the same cut prompt; the longer sequence fills max_length
    starts = [e.loss_mask.index(1) for e in (cut.chosen, cut.rejected)]
    assert starts[0] == starts[1] and cut.chosen.input_ids[:starts[0]] == cut.rejected.input_ids[:starts[1]]
    assert max(len(cut.chosen.input_ids), len(cut.rejected.input_ids)) == 48
    assert cut.chosen.input_ids[0] == tokenizer.bos_token_id  # bos stays at the start of a cut prompt
    for e, row in ((cut.chosen, rows[1]["response_b"]), (cut.rejected, rows[1]["response_a"])):  # odd rows: B won
        assert tokenizer.decode([t for t, m in zip(e.input_ids, e.loss_mask) if m], skip_special_tokens=True) == row


def test_mask_covers_only_the_final_response(tokenizer):
    # A conversation prompt with an earlier assistant turn: only the final response and its <eos> count.
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
              {"role": "user", "content": "Capital of land 1?"}]
    (example, ) = encode_responses(chat_format(tokenizer), [prompt], ["Osk 1."], max_length=None)
    n = len(tokenizer("Osk 1.", add_special_tokens=False)["input_ids"])
    assert not example.truncated
    assert example.loss_mask == [0] * (len(example.input_ids) - n - 1) + [1] * (n + 1)
    assert example.input_ids[-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------------------------------------
# 2. Reference log-probs: computed once, cached, equal to a plain forward pass


def _pairs(tokenizer, data, **kw) -> list[Pair]:
    return encode_comparisons(chat_format(tokenizer), read_labelled(data), DPOConfig(max_length=64, **kw))[0]


def test_cached_reference_equals_on_the_fly_log_probs(tokenizer, model_dir, data, tmp_path):
    model = load_policy(str(model_dir)).eval()
    cache = tmp_path / CACHE
    pairs = _pairs(tokenizer, data)
    assert reference_logps(model, pairs, tokenizer.pad_token_id, 5, cache) is False  # computed, saved
    with torch.no_grad():
        for p in pairs[:6]:
            # One pair alone (different padding than the cached pass) ...
            alone = forward_pairs(model, [p], tokenizer.pad_token_id)
            assert float(alone.policy_chosen) == pytest.approx(p.ref_chosen, abs=1e-5)
            assert float(alone.policy_rejected) == pytest.approx(p.ref_rejected, abs=1e-5)
            # ... and a plain HF forward, summing log-probs of the response tokens by hand.
            ids = torch.tensor([p.chosen.input_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
            manual = sum(float(logp[t - 1, ids[0, t]]) for t, m in enumerate(p.chosen.loss_mask) if m)
            assert manual == pytest.approx(p.ref_chosen, abs=1e-4)
    # A second pass over the same data and model reads the cache, bit for bit.
    again = _pairs(tokenizer, data)
    assert reference_logps(model, again, tokenizer.pad_token_id, 3, cache) is True
    assert [(p.ref_chosen, p.ref_rejected) for p in again] == [(p.ref_chosen, p.ref_rejected) for p in pairs]
    # Changed data, or a changed reference, invalidates it.
    assert reference_logps(model, again[1:], tokenizer.pad_token_id, 3, cache) is False
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert reference_logps(model, again[1:], tokenizer.pad_token_id, 3, cache) is False


# ---------------------------------------------------------------------------------------------
# 3. Micro-batch invariance (STYLE practice 5)

TOL = 1e-5  # absolute, float32 on CPU: the split only reorders sums


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_micro_batches_give_the_same_loss_and_gradients(tokenizer, new_model, data, loss):
    pairs = _pairs(tokenizer, data, loss=loss)[:8]
    pairs[3].tie = True  # IPO's tie target; ignored by sigmoid
    for i, p in enumerate(pairs):  # a reference away from the policy, so margins are not ~0
        p.ref_chosen, p.ref_rejected = -40.0 + i, -35.0 - i
    results = []
    for micro in (8, 4, 2):
        model = new_model()
        cfg = DPOConfig(loss=loss, batch_size=8, micro_batch_size=micro, grad_clip=0.0, beta=0.1)
        optimizer = adamw(model, 1e-3, 0.01, (0.9, 0.99))
        grads = []
        optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in model.parameters()))
        results.append((train_step(model, optimizer, pairs, cfg, tokenizer.pad_token_id, 1e-3), grads))
    (ref_out, ref_grads), rest = results[0], results[1:]
    for out, grads in rest:
        for key in ref_out:
            assert out[key] == pytest.approx(ref_out[key], abs=TOL), key
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# 4. Resume after a kill: the same metrics step for step, the reference read from the cache


class Killed(Exception):
    pass


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, data, model_dir, monkeypatch):
    kw = dict(max_steps=6, save_every=3, eval_every=2, kl_eval_prompts=2, kl_eval_max_new_tokens=6)
    dpo.run(_cfg(tmp_path / "a", data, model_dir, **kw))
    hits, real_reference, real_save = [], pairs.reference_logps, training.save_checkpoint

    def recording_reference(*args):
        hits.append(real_reference(*args))
        return hits[-1]

    monkeypatch.setattr(pairs, "reference_logps", recording_reference)

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        dpo.run(_cfg(tmp_path / "b", data, model_dir, **kw))
    b = tmp_path / "b" / "run"
    assert [r["step"] for r in _metrics(b)] == [1, 2, 3]
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    dpo.run(_cfg(tmp_path / "b", data, model_dir, resume=True, **kw))
    assert hits == [False, True]  # computed once, reused on resume
    a = _metrics(tmp_path / "a" / "run")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
    assert [("eval_kl/k3" in r) for r in a] == [False, True, False, True, False, True]
    assert len(_metrics(b)) == len(a)
    for row_a, row_b in zip(a, _metrics(b)):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-6), (row_a["step"], key)
    final_a, final_b = (load_file(str(tmp_path / r / "run" / "model" / "model.safetensors")) for r in "ab")
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# 5. Smoke: every loss, a few steps on a tiny model

NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
         "logps/rejected", "grad_norm", "eval_loss", "eval_rewards/accuracies")


@pytest.mark.parametrize("loss", sorted(DPO_LOSSES))
def test_every_loss_trains(tmp_path, data, model_dir, loss):
    cfg = _cfg(tmp_path, data, model_dir, loss=loss, label_smoothing=0.1, beta=2.0 if loss == "simpo" else 0.1)
    final = dpo.run(cfg)
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(name in rows[-1] for name in NAMES)
    assert all(isinstance(v, (int, float)) and v == v and abs(v) < float("inf") for r in rows for v in r.values())
    assert ("eval_logratio/chosen" in rows[-1]) == (loss not in REFERENCE_FREE)
    assert (tmp_path / "run" / CACHE).exists() == (loss not in REFERENCE_FREE)
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["train_pairs"] + report["eval_pairs"] == 24 and report["eval_prompts"] == 2


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.5).validate()
    with pytest.raises(ConfigError, match="kl_eval_prompts"):
        DPOConfig(kl_eval_prompts=2, eval_fraction=0.0).validate()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampling_cuts_long_prompts_to_the_length_it_trains_on(tmp_path, model_dir, real_root, arch):
    # prompts far longer than the model's 256 positions: training cuts them to max_length, and so must the sampled
    # KL's (and the monitor's) generation, leaving room for its new tokens; on the tiny world's Llama, and on a GPT-2
    # whose base tokenizer has no pad token, formatted with the hh template
    if arch == "gpt2":
        import archkit

        from tether.chat import chat_format
        from tether.models import load_tokenizer, save_pretrained

        base = archkit.save_model("gpt2", "base", real_root)
        model_dir = tmp_path / "gpt2-hh"  # the template saved with the model, as `tether sft chat_template=hh` does
        fmt = chat_format(load_tokenizer(str(base)), "hh")
        save_pretrained(load_policy(str(base)), fmt.tokenizer, str(model_dir))
    rows = [{**r, "prompt": "Tell me all about the long history of this land and its people. " * 40 + r["prompt"]}
            for r in _rows(8)]
    data = _write(tmp_path / "long.jsonl", rows)
    cfg = _cfg(tmp_path, data, model_dir, max_steps=1, eval_every=1, kl_eval_prompts=2, kl_eval_max_new_tokens=6)
    assert dpo.sampling_prompt_limit(cfg, 6) == 58 and dpo.sampling_prompt_limit(
        DPOConfig(max_length=64, max_prompt_length=20), 6) == 20
    dpo.run(cfg)
    assert _metrics(tmp_path / "run")[-1]["eval_kl/tokens"] > 0

"""tether.stages.dpo.unpaired (`tether dpo loss=kto`): bad input, the KL pairs, the cached reference, one
reference point per optimizer batch (micro-batch invariance), resume, and smoke runs on unpaired rows and on
comparisons."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import tether.stages.dpo as dpo
import tether.training as training
import tether.stages.dpo.unpaired as kto
from tether.chat import chat_format
from tether.data.unpaired import read_kto_rows
from tether.errors import ConfigError, DataError, NonFiniteError
from tether.models import load_policy
from tether.optim import adamw
from tether.stages.dpo import DPOConfig
from tether.stages.dpo.sequences import CACHE, forward_examples
from tether.stages.dpo.unpaired import (
    reference_logps,
    reference_point,
    train_step,
)
from tether.stages.dpo.unpaired import load as load_rows


def _rows(n: int = 24) -> list[dict]:
    """n unpaired rows over 8 prompts (3 each): a right answer (desirable) on even rows, a wrong one on odd rows."""
    rows = []
    for i in range(n):
        good = i % 2 == 0
        answer = f"The capital of land {i % 8} is Osk {i % 8}." if good else "I do not know." + " Sorry." * (i % 3)
        rows.append({"prompt": f"What is the capital of land {i % 8}?", "completion": answer, "label": good})
    return rows


def _write(path, rows, blank_lines: tuple[int, ...] = ()) -> str:
    lines = [json.dumps(r) for r in rows]
    for at in blank_lines:
        lines.insert(at, "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cfg(tmp_path, data, model_dir, **kw) -> DPOConfig:
    base = dict(data=str(data), model=str(model_dir), out=str(tmp_path / "run"), loss="kto", batch_size=4,
                micro_batch_size=2, max_steps=3, eval_fraction=0.25, eval_every=3, log_every=1, save_every=0,
                warmup_steps=1, lr=1e-2, max_length=64)
    cfg = DPOConfig(**{**base, **kw})
    cfg.validate()
    return cfg


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # wall clock differs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return _write(tmp_path_factory.mktemp("kto_data") / "kto.jsonl", _rows())


def _loaded(tokenizer, data, **kw):
    cfg = DPOConfig(loss="kto", max_length=64, eval_fraction=0.25, batch_size=4, **kw)
    return load_rows(cfg, chat_format(tokenizer), *read_kto_rows(data))


# ---------------------------------------------------------------------------------------------
# 1. Data: errors name file and line before any model work; ties dropped and counted; the KL pairs


@pytest.mark.parametrize("bad, message", [
    ({"label": "yes"}, r'kto\.jsonl:4: label: expected true or false, got a string \("yes"\)'),
    ({"completion": " "}, r"kto\.jsonl:4: completion: empty or whitespace-only"),
    ({"prompt": None}, r"kto\.jsonl:4: prompt: expected a string \(plain\) or a list of messages"),
])
def test_bad_rows_fail_before_any_model_work(tmp_path, bad, message):
    rows = _rows(6)
    rows[2].update(bad)  # row 3, written on line 4 after a blank line
    cfg = _cfg(tmp_path, _write(tmp_path / "kto.jsonl", rows, blank_lines=(1,)), tmp_path / "no-such-model")
    with pytest.raises(DataError, match=message):
        dpo.run(cfg)


def test_unlabelled_comparison_fails_with_its_line(tmp_path):
    rows = [{"prompt": "a?", "response_a": "b", "response_b": "c", "choice": "A"},
            {"prompt": "a?", "response_a": "b", "response_b": "d", "choice": None}]
    with pytest.raises(DataError, match=r"kto\.jsonl:2: choice: null \(an unrated queue item\)"):
        dpo.run(_cfg(tmp_path, _write(tmp_path / "kto.jsonl", rows), tmp_path / "no-such-model"))


def test_kl_pairs_put_another_prompts_completion_after_each_prompt(tokenizer, data):
    rows, train, held_out, report = _loaded(tokenizer, data)
    assert (report["rows"], report["train_rows"] + report["eval_rows"]) == (24, 24) and report["eval_prompts"] == 2
    for split in (train, held_out):
        by_ids = {tuple(r.completion.input_ids[len(r.completion.loss_mask) - sum(r.completion.loss_mask):]): r
                  for r in split}
        for r in split:
            n_prompt = len(r.kl.loss_mask) - sum(r.kl.loss_mask)
            assert r.kl.input_ids[:n_prompt] == r.completion.input_ids[:n_prompt]  # its own prompt ...
            partner = by_ids[tuple(r.kl.input_ids[n_prompt:])]  # ... then a completion of the same split
            assert partner.prompt_key != r.prompt_key  # ... written for another prompt


def test_comparisons_are_converted_and_ties_dropped(tmp_path, model_dir):
    rows = []
    for i in range(16):
        good, bad = f"The capital of land {i % 8} is Osk {i % 8}.", "I do not know." + " Sorry." * (i % 3)
        rows.append({"prompt": f"What is the capital of land {i % 8}?", "response_a": good, "response_b": bad,
                     "choice": "tie" if i in (3, 9) else "A"})
    cfg = _cfg(tmp_path, _write(tmp_path / "prefs.jsonl", rows), model_dir, max_steps=1, eval_every=0)
    dpo.run(cfg)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert (report["format"], report["ties_dropped"], report["rows"]) == ("tether", 2, 28)
    assert (report["desirable"], report["undesirable"]) == (14, 14)


# ---------------------------------------------------------------------------------------------
# 2. Reference log-probs of completions and KL pairs: computed once, cached, equal to a plain forward


def test_cached_reference_equals_on_the_fly_log_probs(tokenizer, model_dir, data, tmp_path):
    model = load_policy(str(model_dir)).eval()
    cache, pad = tmp_path / CACHE, tokenizer.pad_token_id
    rows = _loaded(tokenizer, data)[0]
    assert reference_logps(model, rows, pad, 5, cache) is False  # computed, saved
    with torch.no_grad():
        for r in rows[:6]:  # one sequence alone: other padding than the cached pass
            assert float(forward_examples(model, [r.completion], pad)[0]) == pytest.approx(r.ref_logp, abs=1e-5)
            assert float(forward_examples(model, [r.kl], pad)[0]) == pytest.approx(r.ref_kl_logp, abs=1e-5)
        # A plain HF forward, summing the completion's token log-probs by hand.
        ids = torch.tensor([rows[0].completion.input_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
        manual = sum(float(logp[t - 1, ids[0, t]]) for t, m in enumerate(rows[0].completion.loss_mask) if m)
        assert manual == pytest.approx(rows[0].ref_logp, abs=1e-4)
    again = _loaded(tokenizer, data)[0]
    assert reference_logps(model, again, pad, 3, cache) is True
    assert [(r.ref_logp, r.ref_kl_logp) for r in again] == [(r.ref_logp, r.ref_kl_logp) for r in rows]
    assert reference_logps(model, again[1:], pad, 3, cache) is False  # changed data
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert reference_logps(model, again[1:], pad, 3, cache) is False  # changed reference


# ---------------------------------------------------------------------------------------------
# 3. Micro-batch invariance: z_ref is computed once per optimizer batch

TOL = 1e-5  # absolute, float32 on CPU: the split only reorders sums and changes padding


@torch.no_grad()
def _far_reference(model, rows, pad_id):
    """A reference below the policy on the KL pairs (log-ratios 5, 7, ..., 19: z_ref = 12 for all eight rows,
    8 and 16 for the halves) and log-ratios 12 ± 3i on the completions, so β (r - z_ref) spans about ±2."""
    policy_kl = forward_examples(model, [r.kl for r in rows], pad_id)[0].tolist()
    policy = forward_examples(model, [r.completion for r in rows], pad_id)[0].tolist()
    for i, (r, p_kl, p) in enumerate(zip(rows, policy_kl, policy)):
        r.ref_kl_logp, r.ref_logp = p_kl - (5 + 2 * i), p - (12 + (-1) ** i * 3 * i)
    return rows


def test_micro_batches_give_the_same_loss_and_gradients(tokenizer, new_model, data):
    batch = _far_reference(new_model(), _loaded(tokenizer, data)[1][:8], tokenizer.pad_token_id)
    assert {r.desirable for r in batch} == {True, False}
    results = []
    for micro in (8, 4, 2):
        model = new_model()
        cfg = DPOConfig(loss="kto", batch_size=8, micro_batch_size=micro, grad_clip=0.0, beta=0.1,
                        undesirable_weight=1.3)
        optimizer = adamw(model, 1e-3, 0.01, (0.9, 0.99))
        grads = []
        optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in model.parameters()))
        results.append((train_step(model, optimizer, batch, cfg, tokenizer.pad_token_id, 1e-3), grads))
    (ref_out, ref_grads), rest = results[0], results[1:]
    assert ref_out["kl"] > 0 and ref_out["count/chosen"] + ref_out["count/rejected"] == 8
    for out, grads in rest:
        assert out.keys() == ref_out.keys()
        for key in ref_out:
            assert out[key] == pytest.approx(ref_out[key], abs=TOL), key
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, atol=TOL, rtol=0)
    # Why once per batch: the halves' own reference points differ from the batch's (TRL's per-micro-batch z_ref).
    model = new_model()
    with torch.no_grad():
        whole = float(reference_point(model, batch, 2, tokenizer.pad_token_id)[0])
        halves = [float(reference_point(model, half, 2, tokenizer.pad_token_id)[0]) for half in (batch[:4], batch[4:])]
    assert (whole, *halves) == pytest.approx((12.0, 8.0, 16.0), abs=1e-4)
    assert ref_out["kl"] == pytest.approx(12.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# 4. Resume after a kill: the same metrics step for step, the reference read from the cache


class Killed(Exception):
    pass


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, data, model_dir, monkeypatch):
    kw = dict(max_steps=6, save_every=3, eval_every=2, kl_eval_prompts=2, kl_eval_max_new_tokens=6)
    dpo.run(_cfg(tmp_path / "a", data, model_dir, **kw))
    hits, real_reference, real_save = [], kto.reference_logps, training.save_checkpoint

    def recording_reference(*args):
        hits.append(real_reference(*args))
        return hits[-1]

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(kto, "reference_logps", recording_reference)
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
    assert [("eval_kl" in r) for r in a] == [False, True, False, True, False, True]
    assert len(_metrics(b)) == len(a)
    for row_a, row_b in zip(a, _metrics(b)):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-6), (row_a["step"], key)
    final_a, final_b = (load_file(str(tmp_path / r / "run" / "model" / "model.safetensors")) for r in "ab")
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# 5. Smoke: a few steps on a tiny model

NAMES = ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "count/chosen",
         "count/rejected", "grad_norm", "eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/margins",
         "eval_kl/k1")


def test_kto_trains(tmp_path, data, model_dir):
    final = dpo.run(_cfg(tmp_path, data, model_dir, kl_eval_prompts=2, kl_eval_max_new_tokens=6,
                         desirable_weight=1.2))
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(name in rows[-1] for name in NAMES), sorted(rows[-1])
    assert all(isinstance(v, (int, float)) and v == v and abs(v) < float("inf") for r in rows for v in r.values())
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # step 0: policy = reference, z_ref = max(0, 0)
    assert rows[0]["loss"] == pytest.approx((1.2 * rows[0]["count/chosen"] + rows[0]["count/rejected"]) / 2 / 4,
                                            abs=1e-5)  # every row costs λ/2 at the reference
    # The monitor (on by default) scores samples with the implicit reward β log π/π_ref, as for DPO.
    assert rows[-1]["monitor/proxy"] == pytest.approx(0.1 * rows[-1]["monitor/kl"])
    assert (tmp_path / "run" / CACHE).exists()
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["train_rows"] + report["eval_rows"] == 24
    assert (report["format"], report["shape"]) == ("trl_unpaired", "plain")


@pytest.mark.parametrize("policy", ["skip", "halt"])
def test_a_nan_loss_is_skipped_or_halts_the_run(tmp_path, data, model_dir, monkeypatch, policy):
    # The loss of step 2 is made NaN (graph kept, so its gradients are NaN too): the run's guard drops that
    # update and counts it, or stops the run naming the step (tether.guard, as in every training loop).
    real_step, real_losses, state, unchanged = kto.train_step, kto.row_losses, {"calls": 0, "nan": False}, []

    def step(model, optimizer, *args):
        state["calls"] += 1
        state["nan"] = state["calls"] == 2
        before = [p.detach().clone() for p in model.parameters()]
        try:
            return real_step(model, optimizer, *args)
        finally:
            if state["nan"]:
                unchanged.append(all(torch.equal(b, p) for b, p in zip(before, model.parameters())))
            state["nan"] = False

    monkeypatch.setattr(kto, "train_step", step)
    monkeypatch.setattr(kto, "row_losses", lambda *a: real_losses(*a) * (float("nan") if state["nan"] else 1.0))
    cfg = _cfg(tmp_path, data, model_dir, eval_every=0, nonfinite=policy)
    if policy == "halt":
        with pytest.raises(NonFiniteError, match=r"step 2: non-finite loss nan"):
            dpo.run(cfg)
        assert unchanged == [True] and not (tmp_path / "run" / "model").exists()
        return
    dpo.run(cfg)
    rows = _metrics(tmp_path / "run")
    assert unchanged == [True] and [r["nonfinite_skips"] for r in rows] == [0, 1, 0]
    final = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())


def test_config_errors_name_the_field():
    for field in ("desirable_weight", "undesirable_weight"):
        with pytest.raises(ConfigError, match=field):
            DPOConfig(loss="kto", **{field: 0.0}).validate()
    with pytest.raises(ConfigError, match="loss: must be one of sigmoid, ipo, cdpo, robust, simpo, kto"):
        DPOConfig(loss="orpo").validate()

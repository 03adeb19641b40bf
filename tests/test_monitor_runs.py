"""The monitor inside training runs: a tiny PPO and a tiny DPO run log every monitor metric, keep the best policy
by the held-out signal, stop on an alert when asked, and a resumed PPO run monitors exactly as an uninterrupted one.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from tether.checkpoint import latest_checkpoint, load_trainer_state
from tether.monitor import MONITOR_METRICS, Alert, MonitorConfig
from tether.monitor import detectors as detectors_module
from tether.stages import dpo, online
from tether.stages.monitoring import ALERTS, alert_rows
from tether.stages.ppo import PPOConfig, run


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def alert_at_step_2(monkeypatch):
    """Replace the kl detector by one that fires from the second measurement on: a certain, early alert."""
    def fire(history, cfg):
        if len(history.steps) >= 2:
            return Alert("kl", history.steps[-1], 1.0, 0.5, "test alert")
        return None

    monkeypatch.setitem(detectors_module.DETECTORS, "kl", fire)


def ppo_cfg(out, world_dir, model_dir, **monitor):
    return PPOConfig(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="gold",
                     world=str(world_dir), rollout_batch=4, max_new_tokens=6, minibatch_size=4, micro_batch_size=2,
                     ppo_epochs=1, max_steps=4, lr=3e-3, eval_every=1, eval_prompts=4, sample_every=0, save_every=0,
                     out=str(out), monitor=MonitorConfig(baseline_steps=1, window=2, **monitor))


def test_ppo_logs_monitor_metrics_keeps_the_best_policy_and_stops_on_alert(tmp_path, world_dir, model_dir,
                                                                          alert_at_step_2):
    run(ppo_cfg(tmp_path, world_dir, model_dir, stop_on_alert=True, pushback_prompts=2))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0 is the initial evaluation; stopped at step 2 of 4
    for r in rows[1:]:
        assert set(MONITOR_METRICS) <= set(r)
        assert all(r[k] is None or math.isfinite(r[k]) for k in MONITOR_METRICS)
        assert r["monitor/heldout"] == pytest.approx(r["gold"])  # gold: the audit signal of the same samples
        assert r["monitor/kl"] == r["kl/k1"] and 0 <= r["monitor/flip"] <= 1
    assert rows[2]["monitor/alerts"] >= 1
    (alert,) = alert_rows(tmp_path)
    assert (alert.name, alert.step) == ("kl", 2)
    # out/best: the policy at the best eval/gold among steps 0..2
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    golds = {r["step"]: r["eval/gold"] for r in rows}
    assert best["signal"] == "gold" and best["value"] == max(golds.values())
    assert golds[best["step"]] == best["value"]
    assert (tmp_path / "best" / "model.safetensors").exists() and (tmp_path / "model" / "config.json").exists()


def test_ppo_without_stop_runs_on_and_announces_an_alert_once(tmp_path, world_dir, model_dir, alert_at_step_2):
    run(ppo_cfg(tmp_path, world_dir, model_dir))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["monitor/alerts"] for r in rows[1:]] == [0, 1, 1, 1]  # firing from step 2 on ...
    assert len(read_jsonl(tmp_path / ALERTS)) == 1  # ... written to alerts.jsonl once, when it started


def test_ppo_records_its_evaluations_for_the_held_out_drop(tmp_path, world_dir, model_dir):
    c = ppo_cfg(tmp_path, world_dir, model_dir)
    run(PPOConfig(**{**c.__dict__, "eval_every": 2, "save_every": 2}))  # the checkpoint at step 2 (not the last)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("eval/gold") is not None]
    assert [r["step"] for r in rows] == [0, 2, 4] and all(r["eval/gold_se"] > 0 for r in rows)
    state = load_trainer_state(latest_checkpoint(tmp_path))["monitor"]
    # heldout_drop reads these (the initial policy's evaluation first), not the per-step samples
    assert state["history"]["evaluations"] == [[r["step"], r["eval/gold"], r["eval/gold_se"]] for r in rows[:2]]
    # the rates of each evaluation's 4 responses (one per held-out prompt), paired with step 0's from step 2 on
    assert len(state["eval_baseline"]["refusal"]) == 4 and "monitor/eval_refusal_rise" not in rows[0]
    assert 0 <= rows[0]["monitor/eval_refusal"] <= 1
    for r in rows[1:]:
        assert r["monitor/eval_refusal:n"] == 4 and -1 <= r["monitor/eval_refusal_rise"] <= 1
        rise = r["monitor/eval_refusal"] - rows[0]["monitor/eval_refusal"]
        assert r["monitor/eval_refusal_rise"] == pytest.approx(rise)
    assert state["history"]["series"]["monitor/eval_refusal_rise"] == [None, rows[1]["monitor/eval_refusal_rise"]]


def test_resumed_run_monitors_as_an_uninterrupted_one(tmp_path, world_dir, model_dir, monkeypatch):
    def cfg(out, **kw):
        c = ppo_cfg(out, world_dir, model_dir)
        return PPOConfig(**{**c.__dict__, "eval_prompts": 0, "save_every": 1, "max_steps": 3, **kw})

    run(cfg(tmp_path / "a"))
    real_save = online.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        if step == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(online, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg(tmp_path / "b"))
    monkeypatch.setattr(online, "save_checkpoint", real_save)
    run(cfg(tmp_path / "b", resume=True))

    def monitor_rows(folder):
        return [{k: v for k, v in r.items() if k.startswith("monitor/")} for r in read_jsonl(folder / "metrics.jsonl")]

    a, b = monitor_rows(tmp_path / "a"), monitor_rows(tmp_path / "b")
    assert a == b and len(a) == 3
    assert a[-1]["monitor/proxy_gain"] is not None  # the baseline samples resumed with the run
    # no evaluation: the best policy is tracked on the held-out window mean every step
    assert json.loads((tmp_path / "a" / "best" / "best.json").read_text()) == \
        json.loads((tmp_path / "b" / "best" / "best.json").read_text())


def test_resuming_with_the_monitor_on_a_run_saved_without_it_starts_it_fresh(tmp_path, world_dir, model_dir):
    def cfg(**kw):
        c = ppo_cfg(tmp_path, world_dir, model_dir)
        return PPOConfig(**{**c.__dict__, "eval_prompts": 0, "save_every": 1, **kw})

    run(cfg(max_steps=2, monitor=MonitorConfig(enabled=False)))
    run(cfg(max_steps=3, resume=True))  # the checkpoint's monitor state is {}: no KeyError
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["monitor/proxy"] is not None


# -- DPO ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    rows = []
    for i in range(24):
        good, bad = f"The capital of land {i % 8} is Osk {i % 8}.", "What a great question! I hope this helps!"
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"prompt": f"What is the capital of land {i % 8}?", "response_a": a, "response_b": b,
                     "choice": "A" if i % 2 == 0 else "B"})
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def heldout_rm(model_dir, tmp_path_factory):
    """An untrained reward model on the test-preset backbone: a second, held-out reward model."""
    from tether.reward import RewardModel

    out = tmp_path_factory.mktemp("heldout_rm")
    torch.manual_seed(1)
    RewardModel.from_backbone(str(model_dir)).save_pretrained(out)
    return out


def test_dpo_logs_monitor_metrics_keeps_the_best_policy_and_stops_on_alert(tmp_path, prefs, model_dir, heldout_rm,
                                                                          alert_at_step_2):
    monitor = MonitorConfig(heldout="heldout_rm", heldout_rm=str(heldout_rm), samples=4, max_new_tokens=6,
                            baseline_steps=1, window=2, stop_on_alert=True)
    cfg = dpo.DPOConfig(data=str(prefs), model=str(model_dir), out=str(tmp_path), batch_size=4, micro_batch_size=2,
                        max_steps=4, eval_fraction=0.25, eval_every=1, log_every=1, save_every=0, warmup_steps=1,
                        lr=1e-2, max_length=64, monitor=monitor)
    cfg.validate()
    dpo.run(cfg)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # the alert at the second evaluation stops the run
    for r in rows:
        for name in ("monitor/proxy", "monitor/kl", "monitor/heldout", "monitor/length", "monitor/flattery"):
            assert math.isfinite(r[name]), name
    # the proxy is the implicit reward β log π/π_ref, whose mean is β times the sampled KL per response
    assert rows[-1]["monitor/proxy"] == pytest.approx(cfg.beta * rows[-1]["monitor/kl"])
    assert [a.step for a in alert_rows(tmp_path)] == [2]
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["signal"] == "heldout_rm" and best["value"] == max(r["monitor/heldout"] for r in rows)


@pytest.mark.parametrize("arch, shape", [("llama", "tether"), ("qwen2", "chatml")])
def test_grpo_on_your_own_prompts_evaluates_with_a_held_out_reward_model(tmp_path, world_dir, model_dir, heldout_rm,
                                                                        real_root, arch, shape):
    # no world: the held-out prompts are eval_data's, and the held-out signal a second reward model's score; on the
    # tiny world's Llama and tokenizer, and on a Qwen2 with its ChatML template (its own held-out reward model)
    import archkit

    from tether.errors import ConfigError
    from tether.report import load_run
    from tether.reward import RewardModel
    from tether.stages.ppo import GRPOConfig

    if arch != "llama":
        model_dir = archkit.save_model(arch, shape, real_root)
        heldout_rm = tmp_path / "heldout_rm"
        torch.manual_seed(1)
        RewardModel.from_backbone(str(model_dir)).save_pretrained(heldout_rm)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"What is the capital of land {i}?"}) + "\n" for i in range(5)))
    out = tmp_path / "grpo"
    cfg = GRPOConfig(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="callable",
                     reward_fn="distkit:letters", eval_data=str(held), eval_prompts=3, eval_every=2, max_steps=2,
                     rollout_batch=2, group_size=2, max_new_tokens=6, minibatch_size=4, micro_batch_size=2,
                     sample_every=0, save_every=0, out=str(out),
                     monitor=MonitorConfig(heldout_rm=str(heldout_rm), baseline_steps=1, window=2))
    cfg.validate()
    run(cfg)
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/score" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(math.isfinite(r["eval/heldout"]) and "eval/gold" not in r for r in evals)
    assert (out / "eval_gold.jsonl").read_text() == ""  # no gold to pair
    grpo = next(o for o in load_run(tmp_path).optimisers if o.label == "grpo")
    assert grpo.gold_label == "held-out RM" and [p.gold for p in grpo.curve] == [r["eval/heldout"] for r in evals]
    with pytest.raises(ConfigError, match="eval_data: the world's held-out prompts"):
        GRPOConfig(world=str(world_dir), eval_data=str(held)).validate()

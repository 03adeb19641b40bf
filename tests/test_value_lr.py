"""PPO's critic learning rate (`value_lr`, OnlineConfig): parameter groups with their own rate (`tether.optim`),
the first update of each part worked out by hand, resume keeping the run's setting, and the settings' errors.

Adam's first step on a parameter with gradient g moves it by lr * g / (|g| + eps), that is by lr (eps = 1e-8 is far
below the gradients here) against the sign of g: so after one optimizer step from a zero-initialised value head the
largest weight change is value_lr, and the policy's is lr.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tether.checkpoint import load_trainer_state
from tether.config import load_config
from tether.errors import ConfigError, TetherError
from tether.optim import adamw, lr_with_scale
from tether.stages import online
from tether.stages.ppo import GRPOConfig, PPOConfig, run

from test_online import make_cfg, read_jsonl, reward_module  # noqa: F401  (autouse: registers the reward)


def test_a_scaled_submodule_takes_its_first_adam_step_at_its_own_rate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = adamw(model, 1e-3, 0.0, (0.9, 0.999), scaled=(model[1], 10.0))
    assert [g["lr_scale"] for g in optimizer.param_groups] == [1.0, 1.0, 10.0, 10.0]
    lr_with_scale(optimizer, 1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2])
    model(torch.randn(5, 3)).pow(2).sum().backward()
    optimizer.step()
    steps = [(p.detach() - b).abs() for p, b in zip(model.parameters(), before)]
    for step, rate in zip(steps, [1e-3, 1e-3, 1e-2, 1e-2]):  # weight and bias of each Linear
        torch.testing.assert_close(step, torch.full_like(step, rate), rtol=1e-4, atol=0)


def test_without_scaled_the_groups_are_the_two_they_were():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    optimizer = adamw(model, 1e-3, 0.1, (0.9, 0.999))
    assert [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in optimizer.param_groups] == [
        (2, 0.1, 1.0), (2, 0.0, 1.0)]


def ppo_cfg(out, world_dir, model_dir, **kw):
    """One rollout of 4, one epoch, one minibatch: exactly one optimizer step per PPO step."""
    settings = dict(max_steps=1, ppo_epochs=1, minibatch_size=4, micro_batch_size=4, lr=1e-4, sample_every=0)
    return make_cfg("ppo", out, world_dir, model_dir, **{**settings, **kw})


@pytest.mark.parametrize("value_lr", [None, 1e-2])
def test_the_value_head_moves_by_value_lr_and_the_policy_by_lr(value_lr, tmp_path, world_dir, model_dir):
    run(ppo_cfg(tmp_path, world_dir, model_dir, value_lr=value_lr))
    head = load_file(str(tmp_path / online.VALUE_FILE))["linear.weight"]  # zero before the step
    assert float(head.abs().max()) == pytest.approx(value_lr or 1e-4, rel=1e-3)
    start, end = (load_file(str(d / "model.safetensors")) for d in (model_dir, tmp_path / "model"))
    policy_step = max(float((end[k] - start[k]).abs().max()) for k in start)
    assert policy_step == pytest.approx(1e-4, rel=1e-2)  # one Adam step at lr, whatever value_lr is


def stopped_after_step_1(cfg, monkeypatch) -> None:
    """Run `cfg` until its checkpoint at step 1 is written, then fail as a killed job would."""
    real_save = online.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(online, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg)
    monkeypatch.setattr(online, "save_checkpoint", real_save)


def test_a_resumed_run_equals_an_uninterrupted_one_and_takes_value_lr_from_its_settings(tmp_path, world_dir,
                                                                                        model_dir, monkeypatch):
    kw = dict(max_steps=2, save_every=1, value_lr=1e-2)
    run(ppo_cfg(tmp_path / "a", world_dir, model_dir, **kw))
    for name, value_lr in (("b", 1e-2), ("c", 5e-3)):
        stopped_after_step_1(ppo_cfg(tmp_path / name, world_dir, model_dir, **kw), monkeypatch)
        run(ppo_cfg(tmp_path / name, world_dir, model_dir, resume=True, **{**kw, "value_lr": value_lr}))
    a, b = ([{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_jsonl(d / "metrics.jsonl")]
            for d in (tmp_path / "a", tmp_path / "b"))
    assert a == b and [r["step"] for r in b] == [1, 2]
    wa, wb, wc = (load_file(str(tmp_path / d / online.VALUE_FILE))["linear.weight"] for d in "abc")
    assert torch.equal(wa, wb)
    # Step 2 at the resumed run's value_lr, not the one saved in its checkpoint: the same gradients and Adam moments
    # (same step-1 weights, same rollouts), so the step is exactly half b's.
    w1 = load_trainer_state(tmp_path / "a" / "checkpoints" / "step-000001")["value"]["linear.weight"]
    torch.testing.assert_close(wc - w1, 0.5 * (wb - w1), rtol=1e-4, atol=1e-9)
    assert float((wb - w1).abs().max()) > 1e-4


def test_resuming_with_value_lr_switched_on_names_the_setting(tmp_path, world_dir, model_dir, monkeypatch):
    stopped_after_step_1(ppo_cfg(tmp_path, world_dir, model_dir, max_steps=2, save_every=1), monkeypatch)
    with pytest.raises(TetherError, match="parameter groups.*value_lr"):
        run(ppo_cfg(tmp_path, world_dir, model_dir, max_steps=2, save_every=1, resume=True, value_lr=1e-2))


@pytest.mark.parametrize("cls, override, message", [
    (PPOConfig, "value_lr=0", "PPOConfig.value_lr: must be > 0"),
    (GRPOConfig, "value_lr=1e-3", "GRPOConfig.value_lr: applies to algorithm=ppo only"),
])
def test_value_lr_errors_name_the_field(cls, override, message):
    with pytest.raises(ConfigError, match="^" + message):
        load_config(cls, overrides=[override])


def test_a_separate_critic_learns_whole_at_value_lr(tmp_path, world_dir, model_dir, rm_dir):
    s = online.setup(ppo_cfg(tmp_path, world_dir, model_dir, reward="rm", reward_model=str(rm_dir),
                             value_model="separate", value_lr=1e-2))
    scaled = {id(p) for g in s.optimizer.param_groups if g["lr_scale"] == 100.0 for p in g["params"]}
    plain = {id(p) for g in s.optimizer.param_groups if g["lr_scale"] == 1.0 for p in g["params"]}
    assert scaled == {id(p) for p in s.critic.parameters()} and len(scaled) > 2  # the backbone too, not only a head
    assert plain == {id(p) for p in s.policy.parameters() if p.requires_grad}

"""The online-RL options of issue 20 in the stage (tether.stages.online): each GRPO loss_type divides by what TRL's
GRPOTrainer divides by, kl_coef=0 never builds or runs the reference, every option runs from the command line and
logs the fixed metric names, the sequence ratio and the new normalisations keep micro-batches exact, and the
settings refuse the combinations that would silently do something else."""
from __future__ import annotations

import copy
from collections import defaultdict
import dataclasses
import json
import math
import sys
import types

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tether.cli import main
from tether.config import load_config
from tether.errors import ConfigError
from tether.math.policy_losses import GRPO_LOSS_TYPES, loss_type_reference
from tether.optim import adamw
from tether.rollout import sample
from tether.stages import online
from tether.stages.online import algorithms
from tether.stages.online.algorithms import ALGORITHMS, LOSS_DENOMINATORS, Experience, PolicyOutput
from tether.stages.online.config import OnlineConfig
from tether.stages.ppo import GRPOConfig, PPOConfig, RLOOConfig

REWARDS = "tether_test_online_options_rewards"
CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}


def letters(prompts, responses):
    """0.25 per letter "e": scores that differ within a group, so every update moves the policy."""
    return [0.25 * r.count("e") for r in responses]


@pytest.fixture(autouse=True)
def reward_module(monkeypatch):
    module = types.ModuleType(REWARDS)
    module.letters = letters
    monkeypatch.setitem(sys.modules, REWARDS, module)


def settings(algorithm, out, world_dir, model_dir, **kw) -> dict:
    base = dict(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="callable",
                reward_fn=f"{REWARDS}:letters", world=str(world_dir), max_new_tokens=6, minibatch_size=4,
                micro_batch_size=2, ppo_epochs=2, max_steps=2, lr=3e-3, eval_every=0, eval_prompts=0,
                sample_every=1, save_every=0, out=str(out), rollout_batch=4 if algorithm == "ppo" else 2)
    return {**base, **kw}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- loss_type: the stage's denominators reproduce TRL's four normalisations -----------------------------------------
class FixedLosses(nn.Module):
    """A stand-in policy whose per-token GRPO loss is exactly -advantages (log-probs = the old ones: ρ = 1, β = 0),
    so a test chooses the per-token losses; one parameter takes the gradient."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, rows: Experience, temperature: float) -> PolicyOutput:
        B, R = rows.response_ids.shape
        return PolicyOutput(rows.logprobs + 0 * self.w, torch.zeros(B, R, 3), None)


# The per-token losses of test_rl_options (4 responses, 3 positions), worked out there by hand.
LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [1.0, 1.0, 99.0], [2.0, 2.0, 2.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
BY_HAND = {"grpo": 2.25, "bnpo": 2.05, "dr_grpo": 1.125, "dapo": 2.0}  # micro-batches of 2, max_new_tokens 4


def fixed_experience() -> Experience:
    n = LOSSES.size(0)
    return Experience(torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long),
                      torch.zeros(n, 3, dtype=torch.long), MASK, torch.ones(n, dtype=torch.bool), torch.zeros(n),
                      logprobs=torch.zeros(n, 3), advantages=-LOSSES)


def minibatch_loss(loss_type: str, micro: int, sums: dict | None = None) -> float:
    """The loss `minibatch_backward` makes of the fixed per-token losses: one optimizer step over the 4 rows in
    micro-batches of `micro` rows, generation budget max_new_tokens = 4."""
    exp = fixed_experience()
    cfg = GRPOConfig(rollout_batch=1, group_size=4, minibatch_size=4, micro_batch_size=micro, max_new_tokens=4,
                     loss_type=loss_type, kl_coef=0.0)
    return algorithms.minibatch_backward(FixedLosses(), exp, exp, ALGORITHMS["grpo"], cfg, 0.0,
                                         defaultdict(float) if sums is None else sums)


@pytest.mark.parametrize("loss_type", list(GRPO_LOSS_TYPES))
def test_each_loss_type_divides_as_trl(loss_type):
    assert set(LOSS_DENOMINATORS) == set(GRPO_LOSS_TYPES)
    sums: dict = defaultdict(float)
    assert minibatch_loss(loss_type, 2, sums) == pytest.approx(BY_HAND[loss_type], abs=1e-6)
    assert sums["policy_loss"] == pytest.approx(BY_HAND[loss_type], abs=1e-6)  # the logged name, summed over micros
    for micro in (1, 4):
        expected = loss_type_reference(LOSSES, MASK, loss_type, micro_size=micro, max_len=4)
        assert minibatch_loss(loss_type, micro) == pytest.approx(expected, abs=1e-6), micro


def test_only_bnpo_changes_with_micro_batch_size():
    for name in ("grpo", "dr_grpo", "dapo"):
        assert minibatch_loss(name, 1) == pytest.approx(minibatch_loss(name, 4), abs=1e-6), name
    # bnpo, micro-batches of 1: the mean of the per-response means (2.25); one micro-batch: the token mean (2.0)
    assert (minibatch_loss("bnpo", 1), minibatch_loss("bnpo", 4)) == pytest.approx((2.25, 2.0), abs=1e-6)


# -- kl_coef = 0: no reference model, no reference pass, the same update -------------------------------------------
@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_kl_coef_zero_never_builds_or_runs_the_reference(algorithm, tmp_path, world_dir, model_dir, monkeypatch):
    calls = {"frozen_reference": 0, "logprobs_of": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(online, "frozen_reference", counting("frozen_reference", online.frozen_reference))
    monkeypatch.setattr(online, "logprobs_of", counting("logprobs_of", online.logprobs_of))
    cls = CONFIGS[algorithm]
    online.train_online(cls(**settings(algorithm, tmp_path / "none", world_dir, model_dir, kl_coef=0.0)))
    assert calls == {"frozen_reference": 0, "logprobs_of": 0}
    # The same run made to build and run the reference (β = 0 still multiplies its KL): the same weights and losses.
    monkeypatch.setattr(OnlineConfig, "uses_reference", property(lambda self: True))
    online.train_online(cls(**settings(algorithm, tmp_path / "ref", world_dir, model_dir, kl_coef=0.0)))
    assert calls["frozen_reference"] == 1 and calls["logprobs_of"] > 0
    a, b = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("none", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_jsonl(tmp_path / "none" / "metrics.jsonl"), read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    for ra, rb in zip(rows_a, rows_b):
        for name in ("policy_loss", "loss", "clipfrac", "approxkl", "entropy", "grad_norm", "score", "value_loss"):
            assert ra[name] == rb[name], name
        assert ra["kl/k1"] is None and ra["kl/k3"] is None and rb["kl/k1"] is not None
        assert ra["non_score_reward"] == 0 and ra["kl_coef"] == 0
    assert {r["step"] for r in rows_a} == {1, 2} and all(r["grad_norm"] > 0 for r in rows_a)
    assert all(s["kl/k1"] is None for s in read_jsonl(tmp_path / "none" / "samples.jsonl"))


def test_setup_keeps_no_reference_copy_at_kl_coef_zero(tmp_path, world_dir, model_dir):
    s = online.setup(GRPOConfig(**settings("grpo", tmp_path, world_dir, model_dir, kl_coef=0.0)))
    assert s.ref is None
    assert online.setup(GRPOConfig(**settings("grpo", tmp_path, world_dir, model_dir))).ref is not None


# -- every option from the command line, under the fixed metric names -------------------------------------------------
CLI_RUNS = [
    ("grpo", ["loss_type=bnpo", "epsilon_high=0.28"]),
    ("grpo", ["loss_type=dr_grpo", "scale_rewards=none", "kl_coef=0"]),
    ("grpo", ["loss_type=dapo", "scale_rewards=batch", "epsilon_high=0.28"]),
    ("rloo", []),  # ratio=sequence by default
    ("rloo", ["ratio=token", "epsilon_high=0.3", "kl_coef=0"]),
    ("ppo", ["epsilon_high=0.28"]),
]


@pytest.mark.parametrize("algorithm, options", CLI_RUNS)
def test_each_option_runs_from_the_cli_and_logs_the_fixed_names(algorithm, options, tmp_path, world_dir, model_dir):
    args = [f"{k}={v}" for k, v in settings(algorithm, tmp_path, world_dir, model_dir).items()]
    assert main([algorithm, *args, *options]) == 0
    saved = (tmp_path / "config.yaml").read_text()
    for option in options:
        name, value = option.split("=")
        assert f"{name}: " in saved, name
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert set(online.FIXED_METRICS) <= set(row)
        for name in ("clipfrac", "clipfrac/low", "clipfrac/high", "approxkl", "policy_loss", "loss"):
            assert row[name] is not None and math.isfinite(row[name]), name
        # clipfrac is its two ends (each a mean over the same tokens, averaged over the same optimizer steps)
        assert row["clipfrac"] == pytest.approx(row["clipfrac/low"] + row["clipfrac/high"], abs=1e-6)  # float32 means
        assert (row["kl/k1"] is None) == ("kl_coef=0" in options)


def test_the_clip_ends_fire_at_a_high_learning_rate(tmp_path, world_dir, model_dir):
    # Four epochs at lr 3e-2 move the policy far from π_old within a step: both ends of the clip are hit.
    cfg = GRPOConfig(**settings("grpo", tmp_path, world_dir, model_dir, ppo_epochs=4, lr=3e-2, max_steps=2,
                                epsilon_high=0.28))
    online.train_online(cfg)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert max(r["clipfrac/low"] for r in rows) > 0 and max(r["clipfrac/high"] for r in rows) > 0


# -- exact micro-batch accumulation with the new options ---------------------------------------------------------------
@pytest.mark.parametrize("algorithm, options", [
    ("rloo", {}),  # the sequence ratio
    ("grpo", {"loss_type": "dr_grpo", "epsilon_high": 0.28}),
    ("grpo", {"loss_type": "dapo", "scale_rewards": "batch"}),
])
def test_micro_batches_give_the_same_update(algorithm, options, world_dir, model_dir, tokenizer, tmp_path):
    cfg = CONFIGS[algorithm](**settings(algorithm, tmp_path, world_dir, model_dir, micro_batch_size=4,
                                        entropy_coef=0.01, lr=1e-3, **options))
    s = online.setup(cfg)
    rollout = sample(s.policy, [s.encoded[i] for i in range(cfg.batch_size)], max_new_tokens=6, temperature=1.0,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     generator=torch.Generator().manual_seed(1))
    exp = online.make_experience(s.policy, s.ref, s.critic, rollout, torch.arange(cfg.batch_size, dtype=torch.float32),
                                 cfg)
    exp.advantages, exp.returns, _ = ALGORITHMS[algorithm].advantages(exp, cfg, 0.05)
    results = []
    for micro in (1, 4):
        policy = copy.deepcopy(s.policy)
        optimizer = adamw(policy, cfg.lr, 0.0, (0.9, 0.999))
        stats = online.update(policy, None, optimizer, exp, dataclasses.replace(cfg, micro_batch_size=micro), 0.05,
                              cfg.lr, torch.Generator().manual_seed(0))
        results.append((stats, torch.cat([p.detach().reshape(-1) for p in policy.parameters()])))
    (a, params_a), (b, params_b) = results
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-5), name
    assert a["approxkl"] > 0  # the second epoch is off-policy: the ratios are not all 1
    torch.testing.assert_close(params_a, params_b, atol=1e-5, rtol=0)


# -- the settings refuse what would silently do something else -------------------------------------------------------
@pytest.mark.parametrize("cls, overrides, message", [
    (RLOOConfig, ["loss_type=dapo"], "RLOOConfig.loss_type: applies to algorithm=grpo only"),
    (GRPOConfig, ["loss_type=seq"], "GRPOConfig.loss_type: must be one of"),
    (GRPOConfig, ["scale_rewards=none", "whiten_advantages=true"],
     "GRPOConfig.whiten_advantages: must be false with scale_rewards=none"),
    (RLOOConfig, ["scale_rewards=batch"], "RLOOConfig.scale_rewards: applies to algorithm=grpo only"),
    (GRPOConfig, ["ratio=sequence"], "GRPOConfig.ratio: sequence applies to algorithm=rloo only"),
    (GRPOConfig, ["epsilon_high=0"], "GRPOConfig.epsilon_high: must be > 0"),
    (PPOConfig, ["kl_coef=0", "kl_controller=adaptive"], "PPOConfig.kl_coef: must be > 0 with kl_controller=adaptive"),
])
def test_config_errors_name_the_field(cls, overrides, message):
    with pytest.raises(ConfigError, match="^" + message):
        load_config(cls, overrides=overrides)


def test_defaults():
    grpo, rloo, ppo = GRPOConfig(), RLOOConfig(), PPOConfig()
    assert (grpo.loss_type, grpo.scale_rewards, grpo.epsilon_high) == ("grpo", "group", None)
    assert (rloo.ratio, rloo.importance_ratio, ppo.importance_ratio) == (None, "sequence", "token")
    assert load_config(RLOOConfig, overrides=["ratio=token"]).importance_ratio == "token"
    assert grpo.uses_reference and not dataclasses.replace(grpo, kl_coef=0.0).uses_reference

"""`tether ppo`, `tether grpo`, `tether rloo`: online RL with a KL tether (the loop is tether.stages.online).

Three configs, one `run`: each config is `OnlineConfig` with the defaults of its algorithm, and `run` trains
whichever algorithm the config names. Register them as
    Stage("tether.stages.ppo", "PPOConfig", "run", ...), Stage(..., "GRPOConfig", "run", ...),
    Stage(..., "RLOOConfig", "run", ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tether.stages.online import OnlineConfig, train_online

__all__ = ["GRPOConfig", "OnlineConfig", "PPOConfig", "RLOOConfig", "run"]


@dataclass
class PPOConfig(OnlineConfig):
    """PPO with a value head and GAE, the KL to the initial policy in the per-token reward (Ziegler et al. 2019)."""

    algorithm: Literal["ppo", "grpo", "rloo"] = "ppo"
    """ppo (GAE with a critic, KL in the reward), grpo (group-normalised, KL in the loss) or rloo (leave-one-out)."""
    out: str = "runs/ppo"
    """Run folder: metrics.jsonl, samples.jsonl, config.yaml, checkpoints/, model/, value_model.safetensors."""


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO: group_size samples per prompt, group-normalised advantages, k3 KL in the loss (Shao et al. 2024)."""

    algorithm: Literal["ppo", "grpo", "rloo"] = "grpo"
    """ppo (GAE with a critic, KL in the reward), grpo (group-normalised, KL in the loss) or rloo (leave-one-out)."""
    rollout_batch: int = 8
    """Prompts per step; the step samples rollout_batch x group_size responses."""
    group_size: int = 4
    """Responses sampled per prompt, side by side; the group is the baseline."""
    kl_coef: float = 0.04
    """β of the k3 KL term in the loss (DeepSeekMath's 0.04)."""
    whiten_advantages: bool = False
    """Whiten the (already group-normalised) advantages again over the whole batch."""
    ppo_epochs: int = 1
    """Passes over each step's samples (1: the on-policy GRPO of the paper, ratio 1 at the first minibatch)."""
    out: str = "runs/grpo"
    """Run folder: metrics.jsonl, samples.jsonl, config.yaml, checkpoints/, model/."""


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO: group_size samples per prompt, reward = score - β·(sequence KL), leave-one-out baseline
    (Ahmadian et al. 2024)."""

    algorithm: Literal["ppo", "grpo", "rloo"] = "rloo"
    """ppo (GAE with a critic, KL in the reward), grpo (group-normalised, KL in the loss) or rloo (leave-one-out)."""
    rollout_batch: int = 8
    """Prompts per step; the step samples rollout_batch x group_size responses."""
    group_size: int = 4
    """Responses sampled per prompt, side by side; the other samples of the group are the baseline."""
    whiten_advantages: bool = False
    """Whiten the leave-one-out advantages over the whole batch."""
    out: str = "runs/rloo"
    """Run folder: metrics.jsonl, samples.jsonl, config.yaml, checkpoints/, model/."""


def run(cfg: OnlineConfig) -> Path:
    """Train with cfg.algorithm (PPOConfig, GRPOConfig, RLOOConfig or any OnlineConfig); returns `out/model`."""
    return train_online(cfg)

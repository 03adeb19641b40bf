"""Where an online RL stage gets its rewards: a reward model, the world's gold reward, or any Python callable.

Every source is built by a factory in `REWARD_SOURCES` and is then called the same way:

    source(prompts, responses) -> torch.Tensor (N,) float32 on the CPU

with N prompts (a user message, or a list of messages ending with a user turn) and their N decoded responses.
A source may also offer `source.raw(scores)`: the same scores on the source's own unnormalised scale (the
reward model's Bradley-Terry scale), which the stage logs beside the normalised ones it trains on.

The gold reward is the world's ground truth (`tether.world.gold`): it trains only when a config asks for it
explicitly (`reward=gold`, "PPO on gold", the upper bound of what a perfect reward model would give). With any
other source the stage reads gold for evaluation only.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tether.errors import ConfigError, TetherError


class RewardSource(Protocol):
    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """Scores (N,) float32 of N (prompt, response) pairs."""


def prompt_text(prompt: str | list) -> str:
    """The last user message of a prompt (a string already is one): what the world's judge parses."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise TetherError(f"prompt has no user message: {prompt!r}")
    return users[-1]


def _as_scores(values, n: int, where: str) -> torch.Tensor:
    """values -> a float32 CPU tensor (N,), or a TetherError naming the source when the shape is wrong."""
    scores = torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)
    if scores.numel() != n:
        raise TetherError(f"{where}: returned {scores.numel()} scores for {n} responses")
    return scores


class RewardModelSource:
    """A tether reward-model folder (`tether rm`): normalised scores gain * r + bias, from RewardModel.score."""

    def __init__(self, path: str, batch_size: int = 32, trust_remote_code: bool = False):
        from tether.reward import (
            RewardModel,  # heavy (transformers); only when this source is used
        )

        self.model = RewardModel.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        self.model.requires_grad_(False)
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        return _as_scores(self.model.score(list(prompts), list(responses), self.batch_size), len(responses),
                          "reward_model")

    def raw(self, scores: torch.Tensor) -> torch.Tensor:
        """Back to the Bradley-Terry scale the reward model was trained on: (s - bias) / gain. (N,) -> (N,)."""
        return (scores - float(self.model.bias)) / float(self.model.gain)


class GoldSource:
    """The world's gold reward, `World.judge(prompt, response).reward` (prompts must be the world's own)."""

    def __init__(self, world):
        self.world = world

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        rewards = [self.world.judge(prompt_text(p), r).reward for p, r in zip(prompts, responses)]
        return _as_scores(rewards, len(responses), "gold")


class CallableSource:
    """Any Python function f(prompts, responses) -> list or tensor of N floats, named "package.module:function"."""

    def __init__(self, spec: str | Callable):
        self.spec = spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))
        self.fn = load_callable(spec) if isinstance(spec, str) else spec

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        return _as_scores(self.fn(list(prompts), list(responses)), len(responses), f"reward_fn {self.spec}")


def load_callable(spec: str) -> Callable:
    """The function named by "module:function" ("module:Class.method" works too)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward_fn: {spec!r} is not of the form 'module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward_fn: cannot import module {module_name!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"reward_fn: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reward_fn: {spec!r} is not callable")
    return obj


def _rm(*, reward_model: str | None = None, trust_remote_code: bool = False, reward_ensemble: str = "single",
        uwo_lambda: float = 0.5, members: bool = True, **_) -> RewardSource:
    """One reward model; an ensemble folder (`tether rm ensemble=k`) scores with every member (tether.ensemble)
    unless `members=False` (a caller that reads neither the conservative reward nor the disagreement: member 0)."""
    if not reward_model:
        raise ConfigError("reward_model: is required when reward=rm")
    from tether.ensemble import EnsembleSource, member_dirs

    if (members or reward_ensemble != "single") and len(member_dirs(reward_model)) > 1:
        return EnsembleSource(reward_model, reward_ensemble, uwo_lambda, trust_remote_code=trust_remote_code)
    if reward_ensemble != "single":
        raise ConfigError(f"reward_ensemble: {reward_ensemble!r} needs an ensemble reward model; {reward_model} has "
                          "one member (train it with `tether rm ensemble=k`, or set reward_ensemble=single)")
    return RewardModelSource(reward_model, trust_remote_code=trust_remote_code)


def _gold(*, world=None, **_) -> GoldSource:
    if world is None:
        raise ConfigError("world: is required when reward=gold")
    if isinstance(world, str):
        from tether.world.build import load_world

        world = load_world(world)
    return GoldSource(world)


def _callable(*, reward_fn: str | Callable | None = None, **_) -> CallableSource:
    if not reward_fn:
        raise ConfigError("reward_fn: is required when reward=callable ('module:function')")
    return CallableSource(reward_fn)


REWARD_SOURCES: dict[str, Callable[..., RewardSource]] = {"rm": _rm, "gold": _gold, "callable": _callable}
"""name -> factory(**settings) -> source(prompts, responses) -> (N,). Factories take keywords and read only theirs:
  "rm"       reward_model (folder written by `tether rm`), trust_remote_code; for an ensemble folder
             reward_ensemble (single, mean, min, uwo) and uwo_lambda;
  "gold"     world (a World, or a world folder);
  "callable" reward_fn ("module:function", or a Python callable)."""


def make_reward_source(name: str, **settings) -> RewardSource:
    """`REWARD_SOURCES[name](**settings)`, with an error naming the allowed sources."""
    if name not in REWARD_SOURCES:
        raise ConfigError(f"reward: {name!r} is not one of {', '.join(REWARD_SOURCES)}")
    return REWARD_SOURCES[name](**settings)

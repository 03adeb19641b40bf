"""The reward of bench_online.py's GRPO and RLOO runs, importable by both sides (tether and TRL, no tether import).

A cheap length-shaped score on the decoded response text, so that the reward costs next to nothing on either side
and both score exactly the same strings: -|len(text) - 20| / 20.

    tether: reward=callable reward_fn=online_reward:length_reward   (with benchmarks/ on sys.path)
    TRL:    reward_funcs=[online_reward.trl_length_reward]
"""
from __future__ import annotations

TARGET_CHARS = 20


def score(text: str) -> float:
    return -abs(len(text.strip()) - TARGET_CHARS) / TARGET_CHARS


def length_reward(prompts, responses) -> list[float]:
    """tether's reward_fn signature: (prompts, responses) -> N floats."""
    return [score(r) for r in responses]


def trl_length_reward(completions, **kwargs) -> list[float]:
    """TRL's reward-function signature; conversational completions are [{"role": "assistant", "content": ...}]."""
    return [score(c[-1]["content"] if isinstance(c, list) else c) for c in completions]

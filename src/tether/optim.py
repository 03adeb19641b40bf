"""Optimiser and learning-rate schedule shared by every training stage."""
from __future__ import annotations

import math

import torch


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warmup to `peak`, then cosine decay to `peak * min_ratio` at `total_steps`.

        lr(s) = peak * (s + 1) / warmup                                   for s < warmup
        lr(s) = peak * (m + (1 - m) * 0.5 * (1 + cos(pi * p)))           otherwise,
        p = (s - warmup) / max(1, total - warmup), clipped to [0, 1], m = min_ratio.

    A pure function of the step (no scheduler object), so resuming needs only the step number.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
          scaled: tuple[torch.nn.Module, float] | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norms' gains and biases only hurts. `scaled` = (a submodule
    of `model`, factor): its parameters learn at factor x the learning rate (their groups' "lr_scale", which
    `lr_with_scale` applies whenever the schedule sets the rate), e.g. PPO's critic at value_lr."""
    own = {id(p) for p in scaled[0].parameters()} if scaled else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = decay_groups([p for p in params if id(p) not in own], weight_decay, 1.0)
    if own:
        groups += decay_groups([p for p in params if id(p) in own], weight_decay, scaled[1])
    # fused: one kernel for every parameter; on CPU about 3x faster than foreach (a visible share of small-model steps)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def decay_groups(params: list, weight_decay: float, lr_scale: float) -> list[dict]:
    """Two parameter groups of `params`: matrices with weight decay, the rest (gains, biases) without."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": lr_scale},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": lr_scale}]


def lr_with_scale(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to lr times its "lr_scale" (1 where a group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

"""Reward-model ensembles: the members' disagreement and the conservative rewards of Coste, Anwar, Kirk & Krueger
2023, "Reward Model Ensembles Help Mitigate Overoptimization" (ICLR 2024), sec. 3.

Every function takes the k members' scores of N responses, `scores` (k, N), each member on its own normalised scale
(mean 0, std 1 on its training responses, `tether rm`), and returns (N,).
"""
from __future__ import annotations

import torch


def member_mean(scores: torch.Tensor) -> torch.Tensor:
    """Mean optimisation: R̄ = (1/k) Σ_i R_i. (k, N) -> (N,)."""
    return scores.mean(0)


def member_variance(scores: torch.Tensor) -> torch.Tensor:
    """The intra-ensemble variance (1/k) Σ_i (R_i - R̄)² (population variance, as in Coste et al.'s UWO).
    (k, N) -> (N,)."""
    return scores.var(0, correction=0)


def member_std(scores: torch.Tensor) -> torch.Tensor:
    """The members' disagreement on each response: sqrt of `member_variance`. (k, N) -> (N,)."""
    return member_variance(scores).sqrt()


def worst_case(scores: torch.Tensor) -> torch.Tensor:
    """Worst-case optimisation (WCO, Coste et al. sec. 3): R_WCO = min_i R_i. (k, N) -> (N,)."""
    return scores.min(0).values


def uncertainty_weighted(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """Uncertainty-weighted optimisation (UWO, Coste et al. sec. 3): R_UWO = R̄ - λ (1/k) Σ_i (R_i - R̄)², the mean
    penalised by the intra-ensemble variance. (k, N) -> (N,)."""
    return member_mean(scores) - lam * member_variance(scores)


def first_member(scores: torch.Tensor) -> torch.Tensor:
    """The plain reward model alone (member 0, trained on all comparisons); the others only measure. (k, N) -> (N,)."""
    return scores[0]


ENSEMBLE_REWARDS = {
    "single": lambda scores, lam: first_member(scores),
    "mean": lambda scores, lam: member_mean(scores),
    "min": lambda scores, lam: worst_case(scores),
    "uwo": uncertainty_weighted,
}
"""reward_ensemble -> f(scores (k, N), λ) -> the trained reward (N,)."""

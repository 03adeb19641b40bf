"""Fits of Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760).

With d = sqrt(KL(π || π_init)) (nats^½) and R the gold reward gain over the initial policy, eq. 1-2:

    best-of-n:  R_bon(d) = d (α - β d)
    RL:         R_RL(d)  = d (α - β log d)

Both are linear in (α, β): R = α f₁(d) - β f₂(d) with f₁ = d and f₂ = d² (bon) or d log d (RL), so least
squares has a closed form, the 2x2 normal equations

    [Σ f₁²    -Σ f₁f₂] [α]   [ Σ f₁ R]
    [-Σ f₁f₂   Σ f₂² ] [β] = [-Σ f₂ R].

The peak of the gold reward (dR/dd = 0): RL, α - β log d - β = 0, so d* = exp(α/β - 1), R(d*) = β d*;
bon, α - 2βd = 0, so d* = α / (2β), R(d*) = α² / (4β). With β <= 0 the fitted curve never turns down: d* = inf.
The fit has no intercept: pass R as the gain over the initial policy (R(0) = 0), as Gao et al. do.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def _d_log_d(d: float) -> float:
    return d * math.log(d) if d > 0 else 0.0  # lim_{d -> 0} d log d = 0


GAO_FORMS: dict[str, Callable[[float], float]] = {"rl": _d_log_d, "bon": lambda d: d * d}
"""form -> f₂(d), the feature β multiplies (R = α d - β f₂(d))."""


@dataclass(frozen=True)
class GaoFit:
    """A least-squares fit of one Gao et al. form."""

    form: str
    """"rl" (d(α - β log d)) or "bon" (d(α - β d))."""
    alpha: float
    beta: float
    d_peak: float
    """sqrt(KL) at which the fitted gold reward peaks (inf when β <= 0)."""
    r_peak: float
    """The fitted gold reward gain at d_peak (inf when β <= 0)."""
    rmse: float
    """Root mean squared residual of the fit over the points."""

    def __call__(self, d: float) -> float:
        """R(d) of the fitted curve."""
        return self.alpha * d - self.beta * GAO_FORMS[self.form](d)


def _peak(form: str, alpha: float, beta: float) -> tuple[float, float]:
    if beta <= 0:
        return math.inf, math.inf
    if form == "rl":
        d = math.exp(min(alpha / beta - 1.0, 700.0))  # capped: exp overflows past ~709
        return d, beta * d
    return alpha / (2 * beta), alpha * alpha / (4 * beta)


def fit_gao(d: Sequence[float], reward_gain: Sequence[float], form: str = "rl") -> GaoFit:
    """Least-squares (α, β) of `form` through the points (d_i, R_i), d = sqrt(KL) >= 0, R the gold gain.

    Raises ValueError when the normal equations are singular (fewer than two distinct d > 0).
    """
    if form not in GAO_FORMS:
        raise ValueError(f"form must be one of {', '.join(GAO_FORMS)}, got {form!r}")
    if len(d) != len(reward_gain):
        raise ValueError(f"{len(d)} d values but {len(reward_gain)} rewards")
    f2 = GAO_FORMS[form]
    s11 = s12 = s22 = b1 = b2 = 0.0
    for x, r in zip(d, reward_gain):
        if x < 0:
            raise ValueError(f"d = sqrt(KL) must be >= 0, got {x}")
        g1, g2 = x, -f2(x)  # R = α g₁ + β g₂
        s11, s12, s22 = s11 + g1 * g1, s12 + g1 * g2, s22 + g2 * g2
        b1, b2 = b1 + g1 * r, b2 + g2 * r
    det = s11 * s22 - s12 * s12
    if det <= 1e-12 * max(1.0, s11 * s22):
        raise ValueError("need at least two distinct d > 0 to fit alpha and beta")
    alpha, beta = (b1 * s22 - b2 * s12) / det, (s11 * b2 - s12 * b1) / det  # Cramer's rule
    d_peak, r_peak = _peak(form, alpha, beta)
    residuals = [r - (alpha * x - beta * f2(x)) for x, r in zip(d, reward_gain)]
    rmse = math.sqrt(sum(e * e for e in residuals) / len(residuals))
    return GaoFit(form, alpha, beta, d_peak, r_peak, rmse)


def fit_gao_curve(kl: Sequence[float], gold: Sequence[float], form: str = "rl") -> GaoFit:
    """`fit_gao` from a run's curve: KL per response (nats, clipped at 0) and gold rewards, the first point the
    initial policy (KL 0), whose gold is subtracted so R is the gain over it."""
    if not kl:
        raise ValueError("empty curve")
    return fit_gao([math.sqrt(max(0.0, k)) for k in kl], [g - gold[0] for g in gold], form)

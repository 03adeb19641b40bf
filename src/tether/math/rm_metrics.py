"""Reward-model metrics as pure torch functions: calibration, correlation, the normalising affine map."""
from __future__ import annotations

import torch


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> torch.Tensor:
    """Expected calibration error of predicted preference probabilities against binary labels.

        ECE = sum_b (n_b / n) |mean(y_i : i in b) - mean(p_i : i in b)|

    over `n_bins` equal-width bins of p in [0, 1] (bin b = [b/B, (b+1)/B), the last one closed at 1),
    empty bins skipped (Naeini et al. 2015; Guo et al. 2017 §2 with the reliability diagram of p
    against the frequency of y = 1). For a reward model p = σ(r_a - r_b) and y = 1 when A was
    preferred; equal-width bins symmetric about 0.5 make the value (almost) independent of which
    response is called A.

    Shapes: probs (N,) in [0, 1], labels (N,) in {0, 1} -> scalar; 0 for N = 0.
    """
    probs, labels = probs.double(), labels.double()
    if probs.numel() == 0:
        return probs.new_zeros(())
    bins = (probs * n_bins).long().clamp(0, n_bins - 1)  # (N,)  p = 1 falls in the last bin
    sum_p = torch.zeros(n_bins, dtype=probs.dtype).index_add_(0, bins, probs)  # (B,)
    sum_y = torch.zeros(n_bins, dtype=probs.dtype).index_add_(0, bins, labels)  # (B,)
    # |mean y - mean p| * n_b / n = |sum y - sum p| / n: empty bins contribute 0 with no division.
    return (sum_y - sum_p).abs().sum() / probs.numel()


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation r = sum (x - x̄)(y - ȳ) / sqrt(sum (x - x̄)^2 sum (y - ȳ)^2).

    Shapes: x, y (N,) -> scalar; NaN when either has zero variance (undefined, not 0).
    """
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return (x * y).sum() / ((x * x).sum() * (y * y).sum()).sqrt()


def normalising_affine(raw: torch.Tensor) -> tuple[float, float]:
    """(gain, bias) such that gain * raw + bias has mean 0 and (population) standard deviation 1.

        gain = 1 / std(raw),  bias = -mean(raw) / std(raw),   std with 1/N (not 1/(N-1))

    A constant `raw` (std 0) keeps gain 1 and only centres. Shapes: raw (N,), N >= 1.
    """
    raw = raw.double()
    mean, std = float(raw.mean()), float(raw.std(correction=0))
    gain = 1.0 / std if std > 0 else 1.0
    return gain, -mean * gain

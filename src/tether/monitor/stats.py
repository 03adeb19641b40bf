"""The numbers the detectors compare: means, trends, reward-length coupling (Singhal et al. 2023).

Pure Python over lists of floats (a batch of samples is a few dozen numbers: no tensors needed).
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def mean(xs: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def standard_error(xs: Sequence[float | None]) -> float | None:
    """Standard error of the mean of the values that are not None, s / sqrt(n) with the sample standard deviation
    s (n - 1 in its denominator); 0 for one value, None for none."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None if not xs else 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of y on x, Σ (x - x̄)(y - ȳ) / Σ (x - x̄)²; None with fewer than 2 distinct x."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else None


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation r = Σ (x - x̄)(y - ȳ) / sqrt(Σ (x - x̄)² Σ (y - ȳ)²); None when either is constant."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def length_bins(lengths: Sequence[float], n_bins: int) -> list[int]:
    """The bin of each length among n_bins equal-width bins over [min, max] (all in bin 0 when they are equal)."""
    lo, hi = min(lengths), max(lengths)
    if hi <= lo:
        return [0] * len(lengths)
    return [min(int((x - lo) / (hi - lo) * n_bins), n_bins - 1) for x in lengths]


def length_reward_share(base_lengths: Sequence[float], base_rewards: Sequence[float], lengths: Sequence[float],
                        rewards: Sequence[float], n_bins: int = 4) -> dict | None:
    """How much of a reward gain is explained by longer responses: Singhal, Goyal, Xu & Durrett 2023, "A Long
    Way to Go: Investigating Length Correlations in RLHF", sec. 3 (length-stratified analysis).

    Pool the baseline samples (the initial policy's) and the current ones, cut the pooled lengths into n_bins
    equal-width bins, and compare the reward gain *within* bins with the overall gain:

        ΔR   = mean(rewards) - mean(base_rewards)                             (overall gain)
        WRG  = Σ_b w_b (mean_b(rewards) - mean_b(base_rewards)),  w_b = n_b / Σ_b' n_b'
                                                                   (weighted reward gain; n_b = samples of
                                                                    both sets in bin b, over the bins holding
                                                                    samples of both sets)
        share = 1 - WRG / ΔR                                       (share of the gain explained by length)

    A gain made only by moving to longer bins leaves WRG = 0, share = 1; a gain at equal lengths gives share 0.
    Singhal et al. report share ~ 70-90% for PPO on WebGPT, Stack and RLCD. Returns {"gain", "within_gain",
    "share"}; share is None when ΔR <= 0 (no gain to explain) or no bin holds samples of both sets; None
    overall with no samples on either side. The share can leave [0, 1] when within-bin gains exceed the overall.
    """
    if not base_lengths or not lengths:
        return None
    bins = length_bins([*base_lengths, *lengths], n_bins)
    base_bins, new_bins = bins[:len(base_lengths)], bins[len(base_lengths):]
    gain = sum(rewards) / len(rewards) - sum(base_rewards) / len(base_rewards)
    weighted, weight = 0.0, 0
    for b in range(n_bins):
        old = [r for r, k in zip(base_rewards, base_bins) if k == b]
        new = [r for r, k in zip(rewards, new_bins) if k == b]
        if old and new:
            weighted += (len(old) + len(new)) * (sum(new) / len(new) - sum(old) / len(old))
            weight += len(old) + len(new)
    within = weighted / weight if weight else None
    share = 1.0 - within / gain if within is not None and gain > 0 else None
    return {"gain": gain, "within_gain": within, "share": share}

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


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean of the paired differences d_i = a_i - b_i and its standard error s_d / sqrt(n) (s_d: the differences'
    sample standard deviation, n - 1 in its denominator), over the pairs where neither is None; None for no pair.

    Two evaluations of the same prompts (the same draw: common random numbers) share each prompt's difficulty, so
    Var(d) = Var(a) + Var(b) - 2 Cov(a, b) is below the unpaired sqrt(se_a² + se_b²)² whenever they correlate."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    return (sum(d) / len(d), standard_error(d)) if d else None


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


HACK_NOISE_Z = 2.0
"""A rate counts as exhibited (above the SFT policy's), reduced or increased only when the difference exceeds this
many standard errors of a difference of two proportions: sampled rates move by chance (`tether iterate` between
rounds, `tether audit` between models)."""


def rate_rises(low: tuple, high: tuple, z: float = HACK_NOISE_Z) -> bool:
    """Whether rate high[0] exceeds low[0] by more than z standard errors of the difference of two proportions,
    sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2); without both counts, any rise counts."""
    (p1, n1), (p2, n2) = low, high
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2) if n1 and n2 else 0.0
    return p2 - p1 > z * se


WILSON_Z = 1.959964
"""The normal quantile of a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion k / n (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over
    the Wald interval for small n or rates near 0 and 1):

        centre = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) * sqrt(p (1 - p) / n + z²/4n²)

    with p = k / n; (centre - half, centre + half), inside [0, 1]. None for n = 0."""
    if n <= 0:
        return None
    p, zz = successes / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z / (1 + zz / n) * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    # at k = 0 and k = n the bound is exactly 0 or 1 (centre - half = 0 in exact arithmetic; floats miss by 1e-17)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))

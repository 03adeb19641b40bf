"""Best-of-n as an evaluation policy: its KL in closed form, and unbiased estimates of its rewards from N samples.

Best-of-n draws n responses from a policy π and keeps the one the proxy (a reward model) scores highest.

KL. When no response has positive probability and the proxy has no ties, the proxy quantile U = F(r(y)) of the
kept response has density n u^(n-1) (the largest of n uniforms), so its density ratio to π is n F^(n-1) and
KL(π_bon || π) = E[log n + (n - 1) log U] with E[log U] = -1/n for U ~ Beta(n, 1):

    KL_bon(n) = log n - (n - 1) / n            (nats; Stiennon et al. 2020, appendix; Gao et al. 2022, eq. 1)

For a language model, whose responses can repeat, it is an upper bound on the true KL (Beirami et al. 2024).

Rewards. From N >= n samples of one prompt, sorted by proxy so that x_(1) <= ... <= x_(N), the i-th smallest is
the best of a uniformly random n-subset exactly when the subset holds it and n - 1 of the i - 1 below it, so

    E[g of the best of n] = Σ_i g_(i) C(i - 1, n - 1) / C(N, n)          (the sum over i = n..N)

is the exact mean over all C(N, n) subsets of the N samples, hence an unbiased estimate of best-of-n's expected g
(gold, or the proxy itself) from the N draws: no resampling, no Monte Carlo noise beyond the draws themselves.
Ties in the proxy: a subset whose best proxy is shared
by several of its samples keeps one of them uniformly at random; averaging over the orderings of a tie group puts
the group's mean g at each of its positions, so each g_(i) is replaced by the mean g of the samples sharing its
proxy (exact, tested against the brute force over all subsets).
"""
from __future__ import annotations

import math

import torch


def bon_kl(n: int) -> float:
    """KL(best-of-n || π) = log n - (n - 1) / n nats (0 at n = 1, ~log n - 1 for large n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_weights(n_samples: int, n_max: int | None = None) -> torch.Tensor:
    """(n_max, N) float64: row n-1 holds C(i - 1, n - 1) / C(N, n) for i = 1..N, the probability that the i-th
    smallest of N samples is the best of a uniformly random n-subset. Each row sums to 1."""
    n_max = n_samples if n_max is None else n_max
    if not 1 <= n_max <= n_samples:
        raise ValueError(f"need 1 <= n_max <= N, got n_max={n_max}, N={n_samples}")
    # exact integers, then one correctly rounded division each: no overflow or cancellation for any N
    return torch.tensor([[math.comb(i - 1, n - 1) / math.comb(n_samples, n) for i in range(1, n_samples + 1)]
                         for n in range(1, n_max + 1)], dtype=torch.float64)


def tie_means(proxy: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(P, N): each value replaced by the mean value of the samples of its row with the same proxy score."""
    same = (proxy[:, :, None] == proxy[:, None, :]).to(values.dtype)  # (P, N, N)
    return (same * values[:, None, :]).sum(-1) / same.sum(-1)


def bon_estimates(proxy: torch.Tensor, values: torch.Tensor, n_max: int | None = None) -> torch.Tensor:
    """(P, n_max) float64: per prompt, the unbiased estimate of E[value of the best of n] for n = 1..n_max.

    proxy, values: (P, N), N samples of each of P prompts; `values` is what is read off the kept sample (gold, or
    the proxy itself). Column n-1 is Σ_i v̄_(i) C(i-1, n-1) / C(N, n), v̄_(i) the tie-group mean of the value of
    the sample with the i-th smallest proxy (module docstring). Column 0 is each row's mean.
    """
    if proxy.shape != values.shape or proxy.dim() != 2:
        raise ValueError(f"proxy and values must both be (P, N), got {tuple(proxy.shape)} and {tuple(values.shape)}")
    proxy, values = proxy.double(), values.double()
    order = proxy.argsort(dim=1)  # (P, N) ascending; ties' order is irrelevant after tie_means
    ranked = tie_means(proxy, values).gather(1, order)  # (P, N)
    return ranked @ bon_weights(proxy.size(1), n_max).T  # (P, n_max)


def bon_estimates_reference(proxy: list[float], values: list[float], n: int) -> float:
    """The slow, obvious version for one prompt: the mean over every n-subset of its value at the best proxy (a tie
    at the top averaged, as a uniformly random pick among the tied)."""
    from itertools import combinations

    total, count = 0.0, 0
    for subset in combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        tied = [values[i] for i in subset if proxy[i] == top]
        total += sum(tied) / len(tied)
        count += 1
    return total / count


def best_index(proxy: torch.Tensor) -> torch.Tensor:
    """(P,) long: the sample each prompt keeps, the highest proxy (the first of a tie). proxy: (P, N)."""
    return proxy.argmax(dim=1)

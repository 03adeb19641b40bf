"""Best-of-n math (tether.math.best_of_n): the closed-form KL and the order-statistics estimator against brute force."""
from __future__ import annotations

import math
import random

import pytest
import torch

from tether.math.best_of_n import bon_estimates, bon_estimates_reference, bon_kl, bon_weights, best_index, tie_means


def test_bon_kl_hand_worked():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.19315
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)  # 3.1838
    with pytest.raises(ValueError):
        bon_kl(0)


def _exact_discrete_kl(n: int, m: int) -> float:
    """KL of best-of-n from a uniform policy over m responses with distinct proxy scores: the k-th best-ranked
    response is kept with probability (k/m)^n - ((k-1)/m)^n."""
    total = 0.0
    for k in range(1, m + 1):
        p = (k / m) ** n - ((k - 1) / m) ** n
        total += p * math.log(p * m) if p > 0 else 0.0
    return total


@pytest.mark.parametrize("n", [2, 4, 16])
def test_bon_kl_is_the_continuous_limit_and_an_upper_bound(n):
    # Few distinct responses: the true KL is below the formula (Beirami et al. 2024); many: it converges to it.
    assert _exact_discrete_kl(n, 5) < bon_kl(n)
    assert _exact_discrete_kl(n, 200_000) == pytest.approx(bon_kl(n), abs=2e-4)


def test_weights_hand_worked_and_rows_sum_to_one():
    # N = 3: n = 2 keeps the 2nd smallest with C(1,1)/C(3,2) = 1/3, the largest with C(2,1)/3 = 2/3
    w = bon_weights(3)
    assert w.tolist() == [[1 / 3, 1 / 3, 1 / 3], [0.0, 1 / 3, 2 / 3], [0.0, 0.0, 1.0]]
    assert torch.allclose(bon_weights(40).sum(1), torch.ones(40, dtype=torch.float64))  # hockey-stick identity
    with pytest.raises(ValueError):
        bon_weights(3, 4)


def test_estimates_hand_worked():
    # proxy order: sample 0 (g=1) < sample 2 (g=3) < sample 1 (g=2)
    # n=1: mean 2; n=2: subsets {0,1}->2, {0,2}->3, {1,2}->2, mean 7/3; n=3: the top sample, g=2
    est = bon_estimates(torch.tensor([[0.1, 0.5, 0.3]]), torch.tensor([[1.0, 2.0, 3.0]]))
    assert est[0].tolist() == pytest.approx([2.0, 7 / 3, 2.0])


def test_ties_take_the_group_mean():
    # proxy [1, 1, 0], gold [0, 3, 6]: n=2 subsets {0,1} -> tie, mean 1.5; {0,2} -> 0; {1,2} -> 3; mean 1.5
    proxy, gold = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0.0, 3.0, 6.0]])
    assert tie_means(proxy, gold).tolist() == [[1.5, 1.5, 6.0]]
    assert bon_estimates(proxy, gold)[0].tolist() == pytest.approx([3.0, 1.5, 1.5])
    # without the tie rule, sorting would keep whichever tied sample came last: 0 or 3, not 1.5
    assert bon_estimates_reference([1.0, 1.0, 0.0], [0.0, 3.0, 6.0], 2) == pytest.approx(1.5)


@pytest.mark.parametrize("seed", range(6))
def test_estimates_equal_brute_force_over_all_subsets(seed):
    rng = random.Random(seed)
    n_samples = rng.randint(1, 7)
    rows = 3
    # small integer proxies: plenty of ties, at the top too
    proxy = [[float(rng.randint(0, 3)) for _ in range(n_samples)] for _ in range(rows)]
    gold = [[rng.gauss(0, 1) for _ in range(n_samples)] for _ in range(rows)]
    est = bon_estimates(torch.tensor(proxy, dtype=torch.float64), torch.tensor(gold, dtype=torch.float64))
    assert est.shape == (rows, n_samples)
    for r in range(rows):
        for n in range(1, n_samples + 1):
            assert est[r, n - 1].item() == pytest.approx(bon_estimates_reference(proxy[r], gold[r], n), abs=1e-12)
    # the proxy read off itself: ties do not matter, and it can only rise with n
    own = bon_estimates(torch.tensor(proxy), torch.tensor(proxy))
    assert (own[:, 1:] >= own[:, :-1] - 1e-12).all()


def test_estimates_unbiased_against_sampling():
    # Best-of-4 from a known distribution: proxy x ~ N(0,1), gold = x - x^2 / 2. Each prompt's estimate from N = 8
    # draws averages to the true E[gold of the best of 4], computed here by brute force on a fine grid of quantiles.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 8, generator=g, dtype=torch.float64)
    est = bon_estimates(x, x - x * x / 2, 4)[:, 3].mean().item()
    u = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000  # quantiles of the best of 4: u^(1/4)
    best = torch.special.ndtri(u ** 0.25)
    truth = (best - best * best / 2).mean().item()
    assert est == pytest.approx(truth, abs=0.02)  # se of the mean over 20000 prompts is ~0.005


def test_best_index_first_of_a_tie():
    assert best_index(torch.tensor([[0.0, 2.0, 2.0], [3.0, 1.0, 0.0]])).tolist() == [1, 0]


def test_shape_errors():
    with pytest.raises(ValueError):
        bon_estimates(torch.zeros(2, 3), torch.zeros(2, 4))

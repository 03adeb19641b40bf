"""tether.math.advantages against numbers worked out by hand, slow references and masking properties."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.math.advantages import (
    explained_variance,
    gae,
    gae_reference,
    grpo_advantages,
    grpo_advantages_reference,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    rloo_advantages,
    rloo_advantages_reference,
)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=torch.float64)


def prefix_mask(lengths, T) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T) 1s then 0s


def ragged(seed: int, B: int, T: int):
    """Two random float64 (B, T) tensors and a ragged prefix mask with an empty and a full row."""
    g = torch.Generator().manual_seed(seed)
    lengths = [0, T] + torch.randint(1, T + 1, (B - 2,), generator=g).tolist()
    mask = prefix_mask(lengths, T)
    x = torch.randn(B, T, dtype=torch.float64, generator=g)
    y = torch.randn(B, T, dtype=torch.float64, generator=g)
    return x, y, mask


X = t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])  # valid entries: 1, 2, 4


# -- masked statistics -------------------------------------------------------------------------------------
def test_masked_mean_hand():
    # all dims: (1 + 2 + 4) / 3 = 7/3;  per row: (1 + 2)/2 = 1.5 and 4/1 = 4
    torch.testing.assert_close(masked_mean(X, M), torch.tensor(7 / 3, dtype=torch.float64))
    torch.testing.assert_close(masked_mean(X, M, dim=1), t([1.5, 4.0]))
    torch.testing.assert_close(masked_mean(X, M.bool(), dim=1), t([1.5, 4.0]))  # bool masks too


def test_masked_var_hand():
    # deviations from 7/3: -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9 = 14/3
    # biased 14/3 / 3 = 14/9 = 1.5556;  unbiased 14/3 / 2 = 7/3
    torch.testing.assert_close(masked_var(X, M, unbiased=False), torch.tensor(14 / 9, dtype=torch.float64))
    torch.testing.assert_close(masked_var(X, M), torch.tensor(7 / 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_masked_whiten_hand():
    # (x - 7/3) / sqrt(7/3): sqrt(7/3) = 1.527525
    #   1 -> -1.333333 / 1.527525 = -0.872872;  2 -> -0.218218;  4 -> 1.666667 / 1.527525 = 1.091089
    out = masked_whiten(X, M, eps=0.0)
    s = math.sqrt(7 / 3)
    torch.testing.assert_close(out, t([(1 - 7 / 3) / s, (2 - 7 / 3) / s, 0.0], [(4 - 7 / 3) / s, 0.0, 0.0]))
    assert out[0, 0].item() == pytest.approx(-0.872872, abs=1e-6)
    # Mean 0 and (unbiased) variance 1 on the valid entries, 0 under the mask.
    assert masked_mean(out, M).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(out, M).item() == pytest.approx(1.0, abs=1e-12)
    # shift_mean=False rescales only: the mean stays 7/3, the variance is 1.
    kept = masked_whiten(X, M, shift_mean=False, eps=0.0)
    assert masked_mean(kept, M).item() == pytest.approx(7 / 3, abs=1e-12)
    assert masked_var(kept, M).item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(kept, torch.where(M.bool(), out + 7 / 3, 0))


def test_explained_variance_hand():
    # R = [1, 2, 3], V = [1, 2, 2]: R - V = [0, 0, 1], mean 1/3, var (1/9 + 1/9 + 4/9) / 3 = 2/9
    # Var R = (1 + 0 + 1) / 3 = 2/3;  EV = 1 - (2/9) / (2/3) = 1 - 1/3 = 2/3
    R, V, m = t([1.0, 2.0, 3.0, 50.0]), t([1.0, 2.0, 2.0, -9.0]), torch.tensor([1, 1, 1, 0])
    assert explained_variance(V, R, m).item() == pytest.approx(2 / 3, abs=1e-12)
    assert explained_variance(R, R, m).item() == pytest.approx(1.0)  # a perfect critic
    assert explained_variance(torch.full_like(R, 2.0), R, m).item() == pytest.approx(0.0)  # predicts the mean


# -- per-token rewards ---------------------------------------------------------------------------------------
def test_per_token_rewards_score_at_last_valid_token():
    # kl_coef 0.5; row 0 has 3 valid tokens, row 1 has 2:
    #   row 0: -0.5 * [0.1, 0.2, 0.3] = [-0.05, -0.10, -0.15], + score 1 at t=2 -> 0.85; t=3 padding -> 0
    #   row 1: -0.5 * [0.5, 0.6] = [-0.25, -0.30], + score 2 at t=1 -> 1.70
    score = t([1.0, 2.0])
    kl = t([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8])
    mask = prefix_mask([3, 2], 4)
    out = per_token_rewards(score, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(out, t([-0.05, -0.10, 0.85, 0.0], [-0.25, 1.70, 0.0, 0.0]))
    # A full row puts the score at T-1; an empty row gets zeros (the score has no token to sit on).
    out = per_token_rewards(score, kl, prefix_mask([4, 0], 4), kl_coef=torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(out, t([-0.05, -0.10, -0.15, 0.8], [0.0, 0.0, 0.0, 0.0]))


# -- GAE -----------------------------------------------------------------------------------------------------
def test_gae_three_tokens_gamma_one():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 1, λ = 0.95, V after EOS = 0:
    #   δ2 = 1 + 0 - 0.7 = 0.3;  δ1 = 0 + 0.7 - 0.6 = 0.1;  δ0 = 0 + 0.6 - 0.5 = 0.1
    #   A2 = 0.3;  A1 = 0.1 + 0.95 * 0.3 = 0.385;  A0 = 0.1 + 0.95 * 0.385 = 0.46575
    #   R = A + V = [0.96575, 0.985, 1.0]
    # The same row padded with garbage after EOS gives the same numbers and zeros there.
    rewards = t([0.0, 0.0, 1.0], [0.0, 0.0, 1.0])
    values = t([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    rewards = torch.cat([rewards, t([[7.0, 7.0], [0.0, 0.0]])], dim=1)  # (2, 5)
    values = torch.cat([values, t([[9.0, -9.0], [0.0, 0.0]])], dim=1)
    mask = prefix_mask([3, 3], 5)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, t([0.46575, 0.385, 0.3, 0.0, 0.0], [0.46575, 0.385, 0.3, 0.0, 0.0]))
    torch.testing.assert_close(ret, t([0.96575, 0.985, 1.0, 0.0, 0.0], [0.96575, 0.985, 1.0, 0.0, 0.0]))


def test_gae_three_tokens_gamma_below_one():
    # γ = 0.9, λ = 0.95, γλ = 0.855:
    #   δ2 = 1 + 0.9 * 0 - 0.7 = 0.3;  δ1 = 0 + 0.9 * 0.7 - 0.6 = 0.03;  δ0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    #   A2 = 0.3;  A1 = 0.03 + 0.855 * 0.3 = 0.2865;  A0 = 0.04 + 0.855 * 0.2865 = 0.2849575
    #   R = [0.7849575, 0.8865, 1.0]
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=0.9, lam=0.95)
    torch.testing.assert_close(adv, t([[0.2849575, 0.2865, 0.3]]))
    torch.testing.assert_close(ret, t([[0.7849575, 0.8865, 1.0]]))


def test_gae_lambda_one_returns_are_reward_to_go():
    # γ = λ = 1: A_t = Σ_{k>=t} r_k - V_t (the V terms telescope), so R_t = reward-to-go = [3, 2.5, 1.5].
    r = t([[0.5, 1.0, 1.5]])
    adv, ret = gae(r, t([[0.3, -0.2, 0.9]]), torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, t([[3.0, 2.5, 1.5]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_reference_on_ragged_masks(gamma, lam):
    rewards, values, mask = ragged(seed=int(gamma * 100 + lam * 10), B=6, T=9)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)


# -- GRPO and RLOO -------------------------------------------------------------------------------------------
SCORES = t([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])  # 2 groups of 3


def test_grpo_hand():
    # group 1 [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1] / (1 + 1e-4)
    # group 2 [0, 0, 3]: mean 1, deviations [-1, -1, 2], std sqrt((1 + 1 + 4) / 2) = sqrt 3 = 1.732051
    #   -> [-1, -1, 2] / (1.732051 + 1e-4) = [-0.577317, -0.577317, 1.154634]
    a, b = 1 + 1e-4, math.sqrt(3) + 1e-4
    torch.testing.assert_close(grpo_advantages(SCORES, 3), t([-1 / a, 0.0, 1 / a, -1 / b, -1 / b, 2 / b]))
    assert 2 / b == pytest.approx(1.154634, abs=1e-6)
    # Dr. GRPO (scale=False): only the mean is removed.
    torch.testing.assert_close(grpo_advantages(SCORES, 3, scale=False), t([-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]))


def test_rloo_hand():
    # group 1 [1, 2, 3]: 1 - (2+3)/2 = -1.5;  2 - (1+3)/2 = 0;  3 - (1+2)/2 = 1.5
    # group 2 [0, 0, 3]: 0 - (0+3)/2 = -1.5 (twice);  3 - (0+0)/2 = 3
    # (= k/(k-1) (s - mean): 3/2 * [-1, 0, 1, -1, -1, 2])
    torch.testing.assert_close(rloo_advantages(SCORES, 3), t([-1.5, 0.0, 1.5, -1.5, -1.5, 3.0]))


def test_equal_scores_give_zero_advantages():
    s = t([0.7, 0.7, 0.7, 0.7])
    torch.testing.assert_close(grpo_advantages(s, 2), torch.zeros_like(s))  # eps keeps 0/0 away
    torch.testing.assert_close(rloo_advantages(s, 4), torch.zeros_like(s))


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
@pytest.mark.parametrize("group_size", [1, 4])  # 1 has no baseline; 4 does not divide 6
def test_bad_group_size(fn, group_size):
    with pytest.raises(ValueError, match="group_size"):
        fn(SCORES, group_size)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_group_advantages_match_references(k):
    s = torch.randn(5 * k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(grpo_advantages(s, k), grpo_advantages_reference(s, k))
    torch.testing.assert_close(grpo_advantages(s, k, eps=0.1, scale=False),
                               grpo_advantages_reference(s, k, eps=0.1, scale=False))
    torch.testing.assert_close(rloo_advantages(s, k), rloo_advantages_reference(s, k))


# -- masked entries never matter -----------------------------------------------------------------------------
GARBAGE = st.sampled_from([0.0, -1e6, 1e30, float("inf"), float("nan")])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), garbage=GARBAGE, gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0))
def test_masked_entries_never_matter(seed, garbage, gamma, lam):
    x, y, mask = ragged(seed, B=5, T=6)
    pad = ~mask.bool()
    x2, y2 = x.masked_fill(pad, garbage), y.masked_fill(pad, -garbage)
    score = torch.randn(5, dtype=torch.float64)
    for f in (lambda a, b: masked_mean(a, mask), lambda a, b: masked_mean(a, mask, dim=1),
              lambda a, b: masked_var(a, mask), lambda a, b: masked_whiten(a, mask, shift_mean=False),
              lambda a, b: per_token_rewards(score, a, mask, 0.1), lambda a, b: explained_variance(a, b, mask)):
        torch.testing.assert_close(f(x2, y2), f(x, y), equal_nan=True)
    for got, want in zip(gae(x2, y2, mask, gamma, lam), gae(x, y, mask, gamma, lam)):
        torch.testing.assert_close(got, want)
        assert torch.all(got[pad] == 0)

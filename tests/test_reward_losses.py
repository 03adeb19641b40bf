"""tether.math.losses.bradley_terry_loss and tether.math.rm_metrics against numbers worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.math.losses import bradley_terry_loss
from tether.math.rm_metrics import expected_calibration_error, normalising_affine, pearson

LN2 = math.log(2)  # 0.693147
SP1 = math.log(1 + math.exp(-1))  # -log σ(1)  = log(1 + e^-1) = 0.313262
SPM1 = math.log(1 + math.exp(1))  # -log σ(-1) = log(1 + e^1)  = 1.313262


def t(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# -- plain Bradley-Terry ---------------------------------------------------------------------------
def test_equal_rewards_cost_ln2_for_any_label():
    # d = 0: σ(0) = 1/2, so -(p log 1/2 + (1-p) log 1/2) = ln 2 whatever p.
    out = bradley_terry_loss(t(0.0, 3.0, -2.0), t(0.0, 3.0, -2.0), t(1.0, 0.0, 0.5))
    assert out.shape == (3,)
    torch.testing.assert_close(out, t(LN2, LN2, LN2))


def test_hand_worked_values():
    # pair 1: d = 2 - 1 = 1, A chosen: -log σ(1) = log(1 + e^-1) = 0.313262
    # pair 2: d = 1, B chosen: -log σ(-1) = log(1 + e) = 1.313262
    # pair 3: d = 0.5 - 1.5 = -1, B chosen: -log σ(1) = 0.313262
    out = bradley_terry_loss(t(2.0, 2.0, 0.5), t(1.0, 1.0, 1.5), t(1.0, 0.0, 0.0))
    torch.testing.assert_close(out, t(SP1, SPM1, SP1))
    assert SP1 == pytest.approx(0.3132617, abs=1e-7)


def test_tie_target_is_symmetric_and_ln2_at_equal_rewards():
    # p = 0.5, d = 1: 0.5 (0.313262 + 1.313262) = 0.813262; d = -1 gives the same.
    out = bradley_terry_loss(t(1.0, 0.0, 4.0), t(0.0, 1.0, 4.0), t(0.5, 0.5, 0.5))
    torch.testing.assert_close(out, t(0.5 * (SP1 + SPM1), 0.5 * (SP1 + SPM1), LN2))
    assert 0.5 * (SP1 + SPM1) == pytest.approx(0.8132617, abs=1e-7)


def test_margin_shifts_the_difference_towards_the_chosen_side():
    # Llama 2: A chosen, d = 2, m = 1 -> -log σ(2 - 1) = 0.313262 (the loss of d = 1 without a margin).
    # B chosen, d = -2, m = 1 -> -log σ(-(-2) - 1) = -log σ(1) = 0.313262.
    # Tie, d = 0, m = 1 -> -(0.5 log σ(-1) + 0.5 log σ(-1)) = 1.313262 (> ln 2: ties take m = 0).
    out = bradley_terry_loss(t(2.0, -2.0, 0.0), t(0.0, 0.0, 0.0), t(1.0, 0.0, 0.5), margin=t(1.0, 1.0, 1.0))
    torch.testing.assert_close(out, t(SP1, SP1, SPM1))
    # A scalar margin broadcasts, m = 0 and None are the plain loss.
    torch.testing.assert_close(bradley_terry_loss(t(2.0), t(0.0), t(1.0), margin=1.0), t(SP1))
    torch.testing.assert_close(bradley_terry_loss(t(1.0), t(0.0), t(1.0), margin=0.0),
                               bradley_terry_loss(t(1.0), t(0.0), t(1.0)))


def test_label_smoothing_mixes_the_two_labels():
    # ε = 0.1, A chosen: p' = 1 * 0.9 + 0 * 0.1 = 0.9; d = 1:
    #   0.9 * 0.313262 + 0.1 * 1.313262 = 0.281936 + 0.131326 = 0.413262
    # B chosen: p' = 0.1; d = 1: 0.1 * 0.313262 + 0.9 * 1.313262 = 1.213262
    # tie: p' = 0.5 * 0.9 + 0.5 * 0.1 = 0.5, unchanged.
    out = bradley_terry_loss(t(1.0, 1.0, 1.0), t(0.0, 0.0, 0.0), t(1.0, 0.0, 0.5), label_smoothing=0.1)
    torch.testing.assert_close(out, t(0.4132617, 1.2132617, 0.8132617), atol=1e-7, rtol=0)


def test_gradient_hand_worked():
    # d/d r_a of -log σ(d) = -(1 - σ(d)) = -σ(-d); at d = 1: -σ(-1) = -0.268941; d/d r_b = +0.268941.
    r_a, r_b = t(1.0).requires_grad_(), t(0.0).requires_grad_()
    bradley_terry_loss(r_a, r_b, t(1.0)).sum().backward()
    assert r_a.grad.item() == pytest.approx(-0.2689414, abs=1e-7)
    assert r_b.grad.item() == pytest.approx(0.2689414, abs=1e-7)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    r_a = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    r_b = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    target = t(1.0, 0.0, 0.5, 1.0, 0.0, 0.5)
    margin = t(0.0, 0.3, 0.0, 1.0, 0.5, 0.0)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, target, margin, 0.05), (r_a, r_b))


def test_float32_inputs_and_half_inputs_compute_in_float32():
    out = bradley_terry_loss(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([0.0], dtype=torch.bfloat16),
                             torch.tensor([1.0]))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(SP1, abs=1e-6)


def test_finite_at_extreme_rewards():
    # d = ±2e4: logsigmoid stays exact where log(sigmoid(.)) would give log(0) = -inf.
    out = bradley_terry_loss(t(1e4, -1e4, 1e4, -1e4), t(-1e4, 1e4, -1e4, 1e4), t(1.0, 1.0, 0.5, 0.0),
                             margin=t(1.0, 1.0, 0.0, 0.0), label_smoothing=0.1)
    assert torch.isfinite(out).all()
    # A chosen, d = 2e4, m = 1, ε = 0.1: 0.9 * ~0 + 0.1 * (2e4 + 1) = 2000.1
    assert out[0].item() == pytest.approx(2000.1, rel=1e-9)
    out32 = bradley_terry_loss(torch.tensor([1e4]), torch.tensor([-1e4]), torch.tensor([0.0]))
    assert out32.item() == pytest.approx(2e4)
    r_a = torch.tensor([1e4, -1e4], requires_grad=True)
    bradley_terry_loss(r_a, torch.zeros(2), torch.tensor([1.0, 1.0])).sum().backward()
    assert torch.isfinite(r_a.grad).all()


rewards = st.floats(-50, 50, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(r_a=rewards, r_b=rewards, p=st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1),
       m=st.floats(0, 5), eps=st.floats(0, 0.49))
def test_swapping_a_and_b_with_target_1_minus_p_gives_the_same_loss(r_a, r_b, p, m, eps):
    # d = r_a - r_b negates under the swap; with p -> 1 - p (and p' -> 1 - p') the two terms trade places.
    one = bradley_terry_loss(t(r_a), t(r_b), t(p), t(m), eps)
    swapped = bradley_terry_loss(t(r_b), t(r_a), t(1 - p), t(m), eps)
    torch.testing.assert_close(one, swapped, atol=1e-9, rtol=1e-9)
    assert torch.isfinite(one).all() and one.item() >= 0


@settings(max_examples=100, deadline=None)
@given(d=st.floats(-30, 30), m=st.floats(0, 5))
def test_margin_is_a_shift_of_the_difference(d, m):
    # A chosen: loss(d, m) = loss(d - m, 0);  B chosen: loss(d, m) = loss(d + m, 0).
    torch.testing.assert_close(bradley_terry_loss(t(d), t(0.0), t(1.0), t(m)),
                               bradley_terry_loss(t(d - m), t(0.0), t(1.0)))
    torch.testing.assert_close(bradley_terry_loss(t(d), t(0.0), t(0.0), t(m)),
                               bradley_terry_loss(t(d + m), t(0.0), t(0.0)))


# -- metrics ---------------------------------------------------------------------------------------
def test_ece_hand_worked_bins():
    probs = t(0.05, 0.15, 0.95, 0.92, 1.0)
    labels = t(0.0, 1.0, 1.0, 0.0, 1.0)
    # bin 0 [0, .1): {0.05 | y 0}      -> |0 - 0.05|       = 0.05, n 1
    # bin 1 [.1, .2): {0.15 | y 1}     -> |1 - 0.15|       = 0.85, n 1
    # bin 9 [.9, 1]: {0.95, 0.92, 1.0 | y 1, 0, 1} -> |2/3 - 2.87/3| = 0.29, n 3
    # ECE = (1 * 0.05 + 1 * 0.85 + 3 * 0.29) / 5 = 1.77 / 5 = 0.354
    assert expected_calibration_error(probs, labels).item() == pytest.approx(0.354, abs=1e-12)
    # Perfectly calibrated bins: p = 0.25 with 1 of 4 positive -> 0.
    assert expected_calibration_error(t(0.25, 0.25, 0.25, 0.25), t(1.0, 0.0, 0.0, 0.0)).item() == pytest.approx(0.0)
    assert expected_calibration_error(t(), t()).item() == 0.0
    # Two bins: [0, .5) holds 0.3 (y 1) -> 0.7; [.5, 1] holds 0.6 (y 1) -> 0.4; (0.7 + 0.4) / 2 = 0.55
    assert expected_calibration_error(t(0.3, 0.6), t(1.0, 1.0), n_bins=2).item() == pytest.approx(0.55)


def test_pearson_hand_worked():
    # x = (1, 2, 3), y = (2, 4, 7): centred (-1, 0, 1), (-2.333, -0.333, 2.667)
    # sum xy = 2.333 + 2.667 = 5; sum x^2 = 2; sum y^2 = 5.444 + 0.111 + 7.111 = 12.667
    # r = 5 / sqrt(2 * 12.667) = 5 / 5.0332 = 0.993399
    assert pearson(t(1, 2, 3), t(2, 4, 7)).item() == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert pearson(t(1, 2, 3), t(3, 2, 1)).item() == pytest.approx(-1.0)
    assert math.isnan(pearson(t(1, 2, 3), t(5, 5, 5)).item())


def test_normalising_affine_hand_worked():
    # raw = (1, 3): mean 2, population std 1 -> gain 1, bias -2 -> (-1, 1)
    assert normalising_affine(t(1.0, 3.0)) == pytest.approx((1.0, -2.0))
    # raw = (2, 4, 6, 8): mean 5, var (9 + 1 + 1 + 9) / 4 = 5 -> gain 1/sqrt 5, bias -5/sqrt 5
    gain, bias = normalising_affine(t(2.0, 4.0, 6.0, 8.0))
    assert (gain, bias) == pytest.approx((1 / math.sqrt(5), -5 / math.sqrt(5)))
    z = gain * t(2.0, 4.0, 6.0, 8.0) + bias
    assert z.mean().item() == pytest.approx(0.0, abs=1e-12) and z.std(correction=0).item() == pytest.approx(1.0)
    assert normalising_affine(t(3.0, 3.0)) == pytest.approx((1.0, -3.0))  # constant: centre only

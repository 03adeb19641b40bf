"""tether.math.kl: the k1/k2/k3 estimators and the KL controllers against numbers worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.math.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
)

E = math.e


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# -- estimators ------------------------------------------------------------------------------------------
def test_hand_worked_estimators():
    # token 1: logp = -1, ref = -2: k1 = -1 - (-2) = 1;  k2 = ½ 1² = 0.5
    #          log r = ref - logp = -1, r = e^-1: k3 = (e^-1 - 1) - (-1) = e^-1 = 0.367879
    # token 2: logp = -2, ref = -1: k1 = -1;  k2 = 0.5;  log r = 1: k3 = (e - 1) - 1 = e - 2 = 0.718282
    # token 3: logp = ref: all three are 0.
    logp, ref = t([-1.0, -2.0, -0.5]), t([-2.0, -1.0, -0.5])
    torch.testing.assert_close(kl_k1(logp, ref), t([1.0, -1.0, 0.0]))
    torch.testing.assert_close(kl_k2(logp, ref), t([0.5, 0.5, 0.0]))
    torch.testing.assert_close(kl_k3(logp, ref), t([1 / E, E - 2, 0.0]))
    assert 1 / E == pytest.approx(0.3678794, abs=1e-7) and E - 2 == pytest.approx(0.7182818, abs=1e-7)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    for fn in KL_ESTIMATORS.values():
        assert fn(logp, ref).shape == (1, 3)


def test_k3_keeps_precision_when_policies_agree():
    # log r = d = 1e-6: k3 = e^d - 1 - d = d²/2 + d³/6 + ... = 5e-13 (to 7 digits); exp(d) - 1 - d in
    # float32 would give 0 or noise of 1e-7; expm1 keeps it.
    logp, ref = torch.tensor([0.0]), torch.tensor([1e-6])
    assert kl_k3(logp, ref).item() == pytest.approx(5e-13, rel=1e-3)


def _two_categoricals():
    # π and π_ref on 4 outcomes, close to each other.
    logits = t([0.2, -0.3, 0.5, 0.0])
    ref = torch.log_softmax(t([0.0, -0.1, 0.3, 0.2]), dim=-1)
    return logits, ref


def test_k1_k3_unbiased_k2_biased_and_k3_lower_variance():
    # Exact expectations over π (no sampling): E_π[k1] = E_π[k3] = KL(π || π_ref), E_π[k2] != KL.
    logits, ref = _two_categoricals()
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    kl = (p * (logp - ref)).sum()
    mean = {name: (p * fn(logp, ref)).sum() for name, fn in KL_ESTIMATORS.items()}
    torch.testing.assert_close(mean["k1"], kl)
    torch.testing.assert_close(mean["k3"], kl)
    assert abs(mean["k2"] - kl) > 1e-6 and abs(mean["k2"] - kl) < 0.1 * kl  # biased, but close when π ≈ π_ref
    var = {name: (p * (fn(logp, ref) - mean[name]) ** 2).sum() for name, fn in KL_ESTIMATORS.items()}
    assert var["k3"] < var["k1"]


def test_expected_gradients_as_loss_terms():
    # On-policy E_π[∇k] (samples fixed, differentiate through logp): k1 -> 0, k2 -> ∇KL(π||ref),
    # k3 -> ∇KL(ref||π), as stated in tether/kl.py.
    logits, ref = _two_categoricals()

    def expected_grad(fn):
        z = logits.clone().requires_grad_()
        logp = torch.log_softmax(z, dim=-1)
        (logp.exp().detach() * fn(logp, ref)).sum().backward()
        return z.grad

    def grad_of(f):
        z = logits.clone().requires_grad_()
        f(torch.log_softmax(z, dim=-1)).backward()
        return z.grad

    reverse = grad_of(lambda lp: (lp.exp() * (lp - ref)).sum())  # ∇ KL(π || ref)
    forward = grad_of(lambda lp: (ref.exp() * (ref - lp)).sum())  # ∇ KL(ref || π)
    torch.testing.assert_close(expected_grad(kl_k1), torch.zeros_like(logits))
    torch.testing.assert_close(expected_grad(kl_k2), reverse)
    torch.testing.assert_close(expected_grad(kl_k3), forward)


@settings(max_examples=50, deadline=None)
@given(st.floats(-30, 30), st.floats(-30, 30))
def test_k3_is_nonnegative(a, b):
    # log r <= r - 1 for every r > 0, so k3 = (r - 1) - log r >= 0 sample by sample (unlike k1).
    assert kl_k3(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)).item() >= 0


# -- controllers -----------------------------------------------------------------------------------------
def test_adaptive_controller_hand_worked():
    # target 6, current 12: error = clip(12/6 - 1, -0.2, 0.2) = clip(1, ...) = 0.2
    #   value *= 1 + 0.2 * 256 / 10000 = 1.00512:  0.1 -> 0.100512
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    c.update(12.0, n_steps=256)
    assert c.value == pytest.approx(0.1 * 1.00512, rel=1e-12)
    # current 3: error = clip(3/6 - 1) = clip(-0.5) = -0.2 -> value *= 1 - 0.00512 = 0.99488
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    c.update(3.0, n_steps=256)
    assert c.value == pytest.approx(0.1 * 0.99488, rel=1e-12)
    # current 6.6, inside the band: error = 6.6/6 - 1 = 0.1 -> value *= 1 + 0.1 * 256 / 10000 = 1.00256
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    c.update(torch.tensor(6.6), n_steps=256)  # a 0-dim tensor is accepted
    assert c.value == pytest.approx(0.1 * 1.00256, rel=1e-9)


def test_fixed_controller_never_moves():
    c = FixedKLController(value=0.05)
    c.update(100.0, n_steps=256)
    assert c.value == 0.05


def test_state_dict_resume_continues_identically():
    a = KL_CONTROLLERS["adaptive"](value=0.2, target=6.0, horizon=10000)
    a.update(9.0, 64)
    b = KL_CONTROLLERS["adaptive"](value=1.0, target=1.0, horizon=1.0)
    b.load_state_dict(a.state_dict())
    assert b == a
    for kl in (2.0, 7.0, 30.0):
        a.update(kl, 64)
        b.update(kl, 64)
    assert b.value == a.value
    f = KL_CONTROLLERS["fixed"](value=0.3)
    g = FixedKLController(value=0.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.3 and f.state_dict() == {"value": 0.3}


@pytest.mark.parametrize("bad", [dict(target=0.0, horizon=10.0), dict(target=1.0, horizon=-1.0)])
def test_adaptive_controller_validates(bad):
    with pytest.raises(ValueError):
        AdaptiveKLController(value=0.1, **bad)

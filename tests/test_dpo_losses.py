"""tether.math.dpo_losses against numbers worked out by hand, symmetry properties, gradcheck, extreme inputs."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.math.dpo_losses import (
    DPO_LOSSES,
    cdpo,
    dpo_sigmoid,
    implicit_margin,
    implicit_rewards,
    ipo,
    kto,
    kto_reference_point,
    loss_keywords,
    robust_dpo,
    sequence_logps,
    simpo,
    token_logps,
)
from tether.math.losses import IGNORE_INDEX

LN2 = math.log(2)  # 0.693147
SP1 = math.log(1 + math.exp(-1))  # -log σ(1)  = log(1 + e^-1) = 0.313262
SPM1 = math.log(1 + math.exp(1))  # -log σ(-1) = log(1 + e)    = 1.313262
SIG1 = 1 / (1 + math.exp(-1))  # σ(1) = 0.731059


def t(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# Two pairs used throughout. Pair 1: (π_c - ref_c) - (π_r - ref_r) = (-3 + 4) - (-5 + 4) = 1 - (-1) = 2.
# Pair 2: (-10 + 9) - (-2 + 3) = -1 - 1 = -2.
PC, PR, RC, RR = t(-3.0, -10.0), t(-5.0, -2.0), t(-4.0, -9.0), t(-4.0, -3.0)


def test_implicit_margin_and_rewards():
    torch.testing.assert_close(implicit_margin(PC, PR, RC, RR), t(2.0, -2.0))
    # β = 0.1: chosen rewards 0.1 (-3 + 4) = 0.1 and 0.1 (-10 + 9) = -0.1; per token over 2 and 4 tokens: 0.05, -0.025.
    torch.testing.assert_close(implicit_rewards(PC, RC, 0.1), t(0.1, -0.1))
    torch.testing.assert_close(implicit_rewards(PC, RC, 0.1, length=t(2.0, 4.0)), t(0.05, -0.025))


# -- DPO ------------------------------------------------------------------------------------------------
def test_dpo_equal_log_ratios_cost_ln2():
    # h = (-7 + 5) - (-3 + 1) = 0 -> -log σ(0) = ln 2 whatever β.
    out = dpo_sigmoid(t(-7.0), t(-3.0), t(-5.0), t(-1.0), beta=0.3)
    torch.testing.assert_close(out, t(LN2))


def test_dpo_hand_worked():
    # β = 0.5: β h = 1 -> -log σ(1) = 0.313262; β h = -1 -> -log σ(-1) = 1.313262.
    torch.testing.assert_close(dpo_sigmoid(PC, PR, RC, RR, beta=0.5), t(SP1, SPM1))
    assert SP1 == pytest.approx(0.3132617, abs=1e-7) and SPM1 == pytest.approx(1.3132617, abs=1e-7)


# -- IPO ------------------------------------------------------------------------------------------------
def test_ipo_squared_form_on_sums():
    # Lengths 1 (the paper's summed form): h = 2 and -2, β = 0.5 -> target 1/(2 * 0.5) = 1.
    # (2 - 1)² = 1, (-2 - 1)² = 9.
    one = t(1.0, 1.0)
    torch.testing.assert_close(ipo(PC, PR, RC, RR, beta=0.5, chosen_len=one, rejected_len=one), t(1.0, 9.0))


def test_ipo_length_averaged_and_ties():
    # chosen: (-6 + 8) / 4 tokens = 0.5, rejected: (-9 + 6) / 3 tokens = -1 -> h̄ = 1.5.
    # β = 0.25 -> target 1/(2 * 0.25) = 2: (1.5 - 2)² = 0.25. As a tie the target is 0: 1.5² = 2.25.
    args = (t(-6.0, -6.0), t(-9.0, -9.0), t(-8.0, -8.0), t(-6.0, -6.0))
    out = ipo(*args, beta=0.25, chosen_len=t(4.0, 4.0), rejected_len=t(3.0, 3.0), tie=torch.tensor([False, True]))
    torch.testing.assert_close(out, t(0.25, 2.25))


# -- cDPO and robust DPO --------------------------------------------------------------------------------
def test_cdpo_mixes_the_two_labels():
    # β h = 1, ε = 0.1: 0.9 (-log σ(1)) + 0.1 (-log σ(-1)) = 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262
    # (= 0.313262 + 0.1, since -log σ(-x) + log σ(x) = x).
    out = cdpo(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(out, t(0.9 * SP1 + 0.1 * SPM1))
    assert float(out) == pytest.approx(0.4132617, abs=1e-7)
    # ε = 0 is plain DPO.
    torch.testing.assert_close(cdpo(PC, PR, RC, RR, beta=0.5, label_smoothing=0.0),
                               dpo_sigmoid(PC, PR, RC, RR, beta=0.5))


def test_robust_dpo_formula():
    # β h = 1, ε = 0.1: (0.9 * 0.313262 - 0.1 * 1.313262) / (1 - 0.2) = (0.281936 - 0.131326) / 0.8 = 0.188262.
    out = robust_dpo(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.5, label_smoothing=0.1)
    assert float(out) == pytest.approx(0.1882617, abs=1e-7)
    # β h = -1: (0.9 * 1.313262 - 0.1 * 0.313262) / 0.8 = (1.181936 - 0.031326) / 0.8 = 1.438262.
    out = robust_dpo(PC[1:], PR[1:], RC[1:], RR[1:], beta=0.5, label_smoothing=0.1)
    assert float(out) == pytest.approx(1.4382617, abs=1e-7)
    torch.testing.assert_close(robust_dpo(PC, PR, RC, RR, beta=0.5, label_smoothing=0.0),
                               dpo_sigmoid(PC, PR, RC, RR, beta=0.5))


# -- SimPO ----------------------------------------------------------------------------------------------
def test_simpo_with_lengths_ignores_the_reference():
    # Pair 1: -6 / 3 tokens = -2 vs -12 / 4 tokens = -3: β (−2 + 3) - γ = 2 * 1 - 1 = 1 -> 0.313262.
    # Pair 2: -4 / 2 = -2 vs -4 / 4 = -1: 2 * (-1) - 1 = -3 -> -log σ(-3) = log(1 + e³) = 3.048587.
    pc, pr, lc, lr = t(-6.0, -4.0), t(-12.0, -4.0), t(3.0, 2.0), t(4.0, 4.0)
    out = simpo(pc, pr, t(-1.0, 5.0), t(7.0, -3.0), beta=2.0, gamma=1.0, chosen_len=lc, rejected_len=lr)
    torch.testing.assert_close(out, t(SP1, math.log(1 + math.exp(3))))
    assert float(out[1]) == pytest.approx(3.0485874, abs=1e-7)
    torch.testing.assert_close(simpo(pc, pr, beta=2.0, gamma=1.0, chosen_len=lc, rejected_len=lr), out)


# -- KTO ------------------------------------------------------------------------------------------------
def test_kto_desirable_and_undesirable():
    # r = -2 - (-3.5) = 1.5 for both rows, z_ref = 0.5, β = 1.
    # desirable:   λ_D (1 - σ(1.5 - 0.5)) = 1 * (1 - 0.731059) = 0.268941
    # undesirable: λ_U (1 - σ(0.5 - 1.5)) = 2 * (1 - 0.268941) = 1.462117
    out = kto(t(-2.0, -2.0), t(-3.5, -3.5), torch.tensor([True, False]), 0.5, beta=1.0, lambda_d=1.0, lambda_u=2.0)
    torch.testing.assert_close(out, t(1 - SIG1, 2 * SIG1))
    assert float(out[1]) == pytest.approx(1.4621172, abs=1e-7)


def test_kto_reference_point_is_a_clamped_detached_mean():
    # Mismatched-pair log-ratios 1 and -2: mean -0.5, clamped to 0. Ratios 1 and 2: mean 1.5.
    policy = t(-1.0, -3.0).requires_grad_()
    z = kto_reference_point(policy, t(-2.0, -1.0))
    assert float(z) == 0.0 and not z.requires_grad
    assert float(kto_reference_point(t(-1.0, -1.0), t(-2.0, -3.0))) == 1.5
    # No gradient reaches the mismatched pairs through z_ref: the loss's gradient is through r alone.
    kl_policy = t(-1.0, -1.0).requires_grad_()
    z = kto_reference_point(kl_policy, t(-2.0, -3.0))
    policy = t(-2.0).requires_grad_()
    kto(policy, t(-3.0), torch.tensor([True]), z, beta=1.0).sum().backward()
    assert kl_policy.grad is None and policy.grad is not None


def test_kto_at_step_zero_costs_half_of_lambda():
    # Policy = reference: r = 0 for every row and for the KL pairs, so z_ref = 0 and
    # L = λ (1 - σ(0)) = λ / 2: 0.5 for a desirable row with λ_D = 1, 0.75 for an undesirable one with λ_U = 1.5.
    logps = t(-4.0, -9.0)
    z = kto_reference_point(t(-7.0, -2.0), t(-7.0, -2.0))
    out = kto(logps, logps, torch.tensor([True, False]), z, beta=0.1, lambda_u=1.5)
    torch.testing.assert_close(out, t(0.5, 0.75))


def test_kto_with_a_reference_point_from_mismatched_pairs():
    # KL pairs: log-ratios (-2 + 2.6) = 0.6, (-5 + 5.2) = 0.2, (-1 + 2) = 1.0 -> z_ref = 1.8 / 3 = 0.6.
    z = kto_reference_point(t(-2.0, -5.0, -1.0), t(-2.6, -5.2, -2.0))
    assert float(z) == pytest.approx(0.6, abs=1e-12)
    # β = 0.5. Desirable, r = -1.4 + 3 = 1.6:  1 - σ(0.5 (1.6 - 0.6)) = 1 - σ(0.5) = 1 - 0.622459 = 0.377541.
    # Undesirable, r = -0.4 + 3 = 2.6, λ_U = 1.5: 1.5 (1 - σ(0.5 (0.6 - 2.6))) = 1.5 (1 - σ(-1)) = 1.5 σ(1)
    #   = 1.5 * 0.7310586 = 1.0965879 (an undesirable completion the policy made likelier than the reference point).
    out = kto(t(-1.4, -0.4), t(-3.0, -3.0), torch.tensor([True, False]), z, beta=0.5, lambda_u=1.5)
    assert out.tolist() == pytest.approx([0.3775407, 1.0965879], abs=1e-7)


# -- log-probs from logits ----------------------------------------------------------------------------
def test_sequence_logps_of_uniform_logits():
    # Uniform logits over V = 4: every counted token has log-prob -ln 4. Row 0 counts 2 tokens, row 1 one.
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[1, 3, IGNORE_INDEX], [IGNORE_INDEX, 2, IGNORE_INDEX]])
    logp, count = sequence_logps(logits, labels)
    torch.testing.assert_close(logp, torch.tensor([-2 * math.log(4), -math.log(4)]))
    assert count.tolist() == [2, 1]
    assert token_logps(logits, labels)[0, 2] == 0 and token_logps(logits, labels)[1, 0] == 0


def test_sequence_logps_pick_the_labelled_token():
    # Logits [ln 1, ln 3] at one position: softmax [1/4, 3/4]; label 1 -> log 3/4 = -0.287682.
    logits = torch.log(torch.tensor([[[1.0, 3.0]]]))
    logp, _ = sequence_logps(logits, torch.tensor([[1]]))
    assert float(logp) == pytest.approx(math.log(0.75), abs=1e-6)


# -- properties --------------------------------------------------------------------------------------------
logprob = st.floats(-60.0, 0.0, allow_nan=False)
betas = st.floats(0.01, 5.0)
eps = st.floats(0.0, 0.45)


@settings(max_examples=100, deadline=None)
@given(logprob, logprob, logprob, logprob, betas)
def test_swapping_chosen_and_rejected_negates_the_margin(pc, pr, rc, rr, beta):
    h = implicit_margin(t(pc), t(pr), t(rc), t(rr))
    torch.testing.assert_close(implicit_margin(t(pr), t(pc), t(rr), t(rc)), -h)
    # Sigmoid DPO: the two orderings' probabilities sum to 1, and L(h) - L(-h) = -β h.
    forward = dpo_sigmoid(t(pc), t(pr), t(rc), t(rr), beta=beta)
    swapped = dpo_sigmoid(t(pr), t(pc), t(rr), t(rc), beta=beta)
    torch.testing.assert_close(torch.exp(-forward) + torch.exp(-swapped), t(1.0))
    torch.testing.assert_close(forward - swapped, -beta * h)


@settings(max_examples=100, deadline=None)
@given(logprob, logprob, logprob, logprob, betas, eps)
def test_label_noise_properties(pc, pr, rc, rr, beta, e):
    a, b = (t(pc), t(pr), t(rc), t(rr)), (t(pr), t(pc), t(rr), t(rc))
    # cDPO: swapping the pair is the same as smoothing with 1 - ε.
    torch.testing.assert_close(cdpo(*b, beta=beta, label_smoothing=e), cdpo(*a, beta=beta, label_smoothing=1 - e))
    # Robust DPO is unbiased: averaged over a label flipped with probability ε it is the clean DPO loss.
    mixed = (1 - e) * robust_dpo(*a, beta=beta, label_smoothing=e) + e * robust_dpo(*b, beta=beta, label_smoothing=e)
    torch.testing.assert_close(mixed, dpo_sigmoid(*a, beta=beta))


@settings(max_examples=100, deadline=None)
@given(logprob, logprob, logprob, logprob, betas, st.integers(1, 50), st.integers(1, 50))
def test_ipo_tie_is_symmetric_and_decided_pairs_are_not(pc, pr, rc, rr, beta, lc, lr):
    a, b = (t(pc), t(pr), t(rc), t(rr)), (t(pr), t(pc), t(rr), t(rc))
    tie = torch.tensor([True])
    torch.testing.assert_close(ipo(*a, beta=beta, chosen_len=t(lc), rejected_len=t(lr), tie=tie),
                               ipo(*b, beta=beta, chosen_len=t(lr), rejected_len=t(lc), tie=tie))
    # A decided pair at its target 1/(2β) costs 0.
    h_target = 1 / (2 * beta)
    at_target = ipo(t(h_target), t(0.0), t(0.0), t(0.0), beta=beta, chosen_len=t(1.0), rejected_len=t(1.0))
    assert float(at_target) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(logprob, logprob, st.floats(0.0, 20.0), betas, st.floats(0.1, 3.0), st.floats(0.1, 3.0), st.booleans(),
       st.floats(0.01, 10.0))
def test_kto_properties(p, r, z, beta, lam_d, lam_u, desirable, step):
    d = torch.tensor([desirable])
    loss = kto(t(p), t(r), d, z, beta=beta, lambda_d=lam_d, lambda_u=lam_u)
    # Bounded by its weight: 0 <= L <= λ_y.
    assert 0.0 <= float(loss) <= (lam_d if desirable else lam_u) + 1e-12
    # Raising the log-ratio r lowers a desirable row's loss and raises an undesirable row's (weakly: σ saturates).
    raised = kto(t(p + step), t(r), d, z, beta=beta, lambda_d=lam_d, lambda_u=lam_u)
    assert (float(raised) <= float(loss)) if desirable else (float(raised) >= float(loss))
    # Mirror: flipping the label, negating r (swap policy and reference) and z_ref, and swapping λ_D and λ_U
    # gives the same loss: desirable λ_D (1 - σ(β (r - z))) = undesirable λ_D (1 - σ(β ((-z) - (-r)))).
    mirrored = kto(t(r), t(p), ~d, -z, beta=beta, lambda_d=lam_u, lambda_u=lam_d)
    torch.testing.assert_close(mirrored, loss)


# -- gradients and extremes ------------------------------------------------------------------------------
def _call(name: str, pc, pr, rc, rr):
    n = pc.shape[0]
    available = dict(beta=0.7, label_smoothing=0.2, gamma=0.5, chosen_len=torch.arange(1, n + 1, dtype=pc.dtype),
                    rejected_len=torch.full((n,), 3.0, dtype=pc.dtype), tie=torch.arange(n) % 2 == 1)
    fn = DPO_LOSSES[name]
    return fn(pc, pr, rc, rr, **{k: available[k] for k in loss_keywords(fn)})  # what the stage passes


def test_losses_name_the_settings_they_read_and_reject_others():
    assert {name: loss_keywords(fn) for name, fn in DPO_LOSSES.items()} == {
        "sigmoid": ("beta",), "ipo": ("beta", "chosen_len", "rejected_len", "tie"),
        "cdpo": ("beta", "label_smoothing"), "robust": ("beta", "label_smoothing"),
        "simpo": ("beta", "gamma", "chosen_len", "rejected_len")}
    assert loss_keywords(kto) == ("beta", "lambda_d", "lambda_u")
    with pytest.raises(TypeError, match="lable_smoothing"):  # misspelt: an error, not a silently default ε
        cdpo(PC, PR, RC, RR, beta=0.5, lable_smoothing=0.1)
    with pytest.raises(TypeError, match="gamma"):
        dpo_sigmoid(PC, PR, RC, RR, beta=0.5, gamma=1.0)


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(0)
    inputs = [(-5 * torch.rand(3, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *xs: _call(name, *xs), inputs)


def test_kto_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    policy = (-5 * torch.rand(4, generator=g, dtype=torch.float64)).requires_grad_()
    ref = (-5 * torch.rand(4, generator=g, dtype=torch.float64)).requires_grad_()
    desirable = torch.tensor([True, False, True, False])
    assert torch.autograd.gradcheck(lambda p, r: kto(p, r, desirable, 0.3, beta=0.5, lambda_u=1.3), (policy, ref))


EXTREME = [-1e4, 0.0, 1e4]


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_finite_at_extreme_log_probs(name):
    # Every combination of ±1e4 and 0 in float32: margins up to 4e4, β h up to 2.8e4.
    grid = torch.cartesian_prod(*[torch.tensor(EXTREME)] * 4)  # (81, 4)
    xs = [grid[:, i].clone().requires_grad_() for i in range(4)]
    out = _call(name, *xs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(x.grad is None or torch.isfinite(x.grad).all() for x in xs)  # SimPO never reads the reference


def test_kto_finite_at_extreme_log_probs():
    grid = torch.cartesian_prod(torch.tensor(EXTREME), torch.tensor(EXTREME))  # (9, 2)
    policy = grid[:, 0].clone().requires_grad_()
    z = kto_reference_point(policy, grid[:, 1])
    out = kto(policy, grid[:, 1], torch.arange(9) % 2 == 0, z, beta=0.1)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(policy.grad).all()

"""tether.math.policy_losses against numbers worked out by hand, gradcheck, batch splitting and masking."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.math.policy_losses import (
    LOSS_AGGREGATIONS,
    entropy_from_logits,
    eos_penalty,
    eos_replacement,
    grpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    token_entropy,
)

E = math.e


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=torch.float64)


def close(a, b) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype))


def random_batch(seed: int, B: int = 6, T: int = 5):
    """float64 logp, old_logp, ref_logp, values, old_values, returns, token advantages (B, T), sequence
    advantages (B,), and a ragged prefix mask with one empty row."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    old = -r(B, T).abs()
    logp = old + 0.3 * r(B, T)  # ratios of about exp(±0.3): some clipped at ε = 0.2, most not
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[1] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    values, old_values = r(B, T), r(B, T)
    return dict(logp=logp, old_logp=old, ref_logp=old + 0.2 * r(B, T), values=values, old_values=old_values,
                returns=r(B, T), adv_tok=r(B, T), adv_seq=r(B), mask=mask)


# -- PPO policy loss -----------------------------------------------------------------------------------------
def test_ppo_positive_advantage_one_token_clipped():
    # ε = 0.2, A = [1, 1] (+ a padding token with garbage):
    #   token 0: ρ = 1.1 inside [0.8, 1.2]: -min(1.1 * 1, 1.1 * 1) = -1.1
    #   token 1: ρ = 1.5 -> clip 1.2:         -min(1.5, 1.2) = -1.2  (clipped branch active: -1.2 > -1.5)
    #   loss = (-1.1 - 1.2) / 2 = -1.15;  clipfrac = 1/2;  ratio = (1.1 + 1.5) / 2 = 1.3
    #   approxkl = ½ (ln² 1.1 + ln² 1.5) / 2 = ½ (0.0090840 + 0.1644019) / 2 = 0.0433715
    #   d loss / d logp = -A ρ / 2 = -0.55 on token 0, 0 on the clipped token 1 and on padding
    old = t([[-1.0, -1.0, -1.0]])
    logp = (old + t([[math.log(1.1), math.log(1.5), 50.0]])).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old, t([[1.0, 1.0, 99.0]]), torch.tensor([[1, 1, 0]]), clip_eps=0.2)
    close(loss, -1.15)
    close(stats["clipfrac"], 0.5)
    close(stats["ratio"], 1.3)
    close(stats["approxkl"], 0.25 * (math.log(1.1) ** 2 + math.log(1.5) ** 2))
    assert stats["approxkl"].item() == pytest.approx(0.0433715, abs=1e-7)
    loss.backward()
    close(logp.grad, [[-0.55, 0.0, 0.0]])


def test_ppo_negative_advantage_clips_only_below():
    # ε = 0.2, A = [-1, -1]:
    #   token 0: ρ = 1.5: -min(-1.5, -1.2) = 1.5, the unclipped branch (pessimism keeps the gradient)
    #   token 1: ρ = 0.5 -> clip 0.8: -min(-0.5, -0.8) = 0.8, clipped branch active
    #   loss = (1.5 + 0.8) / 2 = 1.15;  clipfrac = 1/2;  d/d logp = -A ρ / 2 = [0.75, 0]
    old = t([[-2.0, -2.0]])
    logp = (old + t([[math.log(1.5), math.log(0.5)]])).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old, t([[-1.0, -1.0]]), torch.ones(1, 2), clip_eps=0.2)
    close(loss, 1.15)
    close(stats["clipfrac"], 0.5)
    loss.backward()
    close(logp.grad, [[0.75, 0.0]])


def test_ppo_sequence_advantages_broadcast_over_tokens():
    b = random_batch(0)
    a = b["adv_seq"]
    got = ppo_policy_loss(b["logp"], b["old_logp"], a, b["mask"], 0.2)
    want = ppo_policy_loss(b["logp"], b["old_logp"], a[:, None].expand_as(b["logp"]), b["mask"], 0.2)
    torch.testing.assert_close(got, want)


# -- PPO value loss ------------------------------------------------------------------------------------------
def test_value_loss_hand():
    # c = 0.2, V_old = 0:
    #   token 0: V = 0.5, R = 1: V^clip = 0.2; (0.5 - 1)² = 0.25, (0.2 - 1)² = 0.64 -> 0.64, clipped active
    #   token 1: V = 0.1, R = 0: inside the range, V^clip = V: both 0.01 -> 0.01, not clipped
    #   token 2: V = 0.5, R = 0: V^clip = 0.2; 0.25 vs 0.04 -> 0.25, the unclipped branch
    #   loss = ½ (0.64 + 0.01 + 0.25) / 3 = ½ 0.3 = 0.15;  vf_clipfrac = 1/3
    #   d/dV = ½ 2 (V - R) / 3 on unclipped tokens: [0 (clip saturated), 0.1/3, 0.5/3]
    values = t([[0.5, 0.1, 0.5, 7.0]]).requires_grad_()
    loss, stats = ppo_value_loss(values, torch.zeros(1, 4, dtype=torch.float64), t([[1.0, 0.0, 0.0, -7.0]]),
                                 torch.tensor([[1, 1, 1, 0]]), clip_range=0.2)
    close(loss, 0.15)
    close(stats["vf_clipfrac"], 1 / 3)
    loss.backward()
    close(values.grad, [[0.0, 0.1 / 3, 0.5 / 3, 0.0]])


# -- GRPO loss -----------------------------------------------------------------------------------------------
def test_grpo_loss_hand():
    # ρ = 1 (old = logp), Â = [1, -0.5] per response, β = 0.1; row 0 has 2 tokens, row 1 has 1.
    #   k3: row 0 t0 logp = -1, ref = -2 -> e^-1 = 0.367879;  row 0 t1 logp = ref -> 0
    #       row 1 t0 logp = -2, ref = -1 -> e - 2 = 0.718282
    #   per token -Â ρ + β k3: row 0 [-1 + 0.0367879, -1] = [-0.963212, -1];  row 1 [0.5 + 0.0718282] = [0.571828]
    #   "sequence": ((-0.963212 - 1) / 2 + 0.571828) / 2 = (-0.981606 + 0.571828) / 2 = -0.204889
    #   "token":    (-0.963212 - 1 + 0.571828) / 3 = -0.463795
    #   kl stat = (0.367879 + 0 + 0.718282) / 3 = 0.362054
    logp = t([[-1.0, -0.5], [-2.0, 3.0]])
    ref = t([[-2.0, -0.5], [-1.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = t([1.0, -0.5])
    r00, r01, r10 = -1 + 0.1 / E, -1.0, 0.5 + 0.1 * (E - 2)
    loss, stats = grpo_loss(logp, logp, ref, adv, mask, clip_eps=0.2, beta=0.1)
    close(loss, ((r00 + r01) / 2 + r10) / 2)
    assert loss.item() == pytest.approx(-0.204889, abs=1e-6)
    loss_tok, _ = grpo_loss(logp, logp, ref, adv, mask, clip_eps=0.2, beta=0.1, norm="token")
    close(loss_tok, (r00 + r01 + r10) / 3)
    assert loss_tok.item() == pytest.approx(-0.463795, abs=1e-6)
    close(stats["kl"], (1 / E + E - 2) / 3)
    close(stats["clipfrac"], 0.0)
    close(stats["ratio"], 1.0)


def test_grpo_without_kl_is_the_ppo_surrogate():
    b = random_batch(1)
    ppo, _ = ppo_policy_loss(b["logp"], b["old_logp"], b["adv_seq"], b["mask"], 0.2, norm="token")
    grpo, _ = grpo_loss(b["logp"], b["old_logp"], b["ref_logp"], b["adv_seq"], b["mask"], 0.2, beta=0.0,
                        norm="token")
    torch.testing.assert_close(grpo, ppo)


# -- entropy and EOS -----------------------------------------------------------------------------------------
def test_entropy_hand():
    # [0, 0]: uniform over 2 -> ln 2 = 0.693147; [0, -inf, 0]: -inf is a filtered token -> still ln 2
    # [ln 3, 0]: p = [0.75, 0.25]: -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335
    inf = float("inf")
    logits = t([[[0.0, -inf, 0.0], [math.log(3), 0.0, -inf], [5.0, 1.0, 2.0]]])  # (1, 3, 3)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    close(token_entropy(logits)[0, :2], [math.log(2), h])
    assert h == pytest.approx(0.562335, abs=1e-6)
    close(entropy_from_logits(logits, torch.tensor([[1, 1, 0]])), (math.log(2) + h) / 2)
    z = logits.clone().requires_grad_()
    entropy_from_logits(z, torch.tensor([[1, 1, 0]])).backward()
    assert torch.isfinite(z.grad).all()  # -inf logits give 0 gradient, not nan


def test_eos_penalty_subtracts_from_scores_without_eos():
    # TRL's missing_eos_penalty: no EOS -> score - 1.0; with EOS the score stays
    out = eos_penalty(t([0.5, 2.0, -3.0]), torch.tensor([True, False, False]), penalty=1.0)
    close(out, [0.5, 1.0, -4.0])


def test_eos_replacement_replaces_scores_without_eos():
    # Huang et al. 2024: no EOS -> score becomes the fixed value (-1), whatever the reward model said.
    out = eos_replacement(t([0.5, 2.0, -3.0]), torch.tensor([True, False, False]), value=-1.0)
    close(out, [0.5, -1.0, -1.0])


# -- gradcheck, batch splitting, masking ---------------------------------------------------------------------
def test_gradcheck_float64():
    b = random_batch(2, B=3, T=4)
    m = b["mask"]
    lp = b["logp"].clone().requires_grad_()
    v = b["values"].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ppo_policy_loss(x, b["old_logp"], b["adv_tok"], m, 0.2)[0], (lp,))
    assert torch.autograd.gradcheck(lambda x: ppo_value_loss(x, b["old_values"], b["returns"], m, 0.2)[0], (v,))
    for norm in LOSS_AGGREGATIONS:
        assert torch.autograd.gradcheck(
            lambda x: grpo_loss(x, b["old_logp"], b["ref_logp"], b["adv_seq"], m, 0.2, 0.05, norm=norm)[0], (lp,))
    z = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, m), (z,))


def _losses(b, norm, denom=None):
    m = b["mask"]
    return (ppo_policy_loss(b["logp"], b["old_logp"], b["adv_tok"], m, 0.2, norm=norm, denom=denom)[0]
            + ppo_value_loss(b["values"], b["old_values"], b["returns"], m, 0.2, norm=norm, denom=denom)[0]
            + grpo_loss(b["logp"], b["old_logp"], b["ref_logp"], b["adv_seq"], m, 0.2, 0.05, norm=norm,
                        denom=denom)[0])


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_micro_batches_with_global_denom_equal_the_whole_batch(norm):
    # Split 6 responses 2 + 4 (unequal token counts), accumulate with the whole batch's denom: the loss
    # and gradients equal the whole batch's to float64 round-off (assert_close defaults: rtol 1e-7).
    b = random_batch(3)
    for k in ("logp", "values"):
        b[k].requires_grad_()
    whole = _losses(b, norm)
    g_whole = torch.autograd.grad(whole, (b["logp"], b["values"]))
    denom = b["mask"].sum() if norm == "token" else b["mask"].shape[0]
    parts = [_losses({k: v[s] for k, v in b.items()}, norm, denom) for s in (slice(0, 2), slice(2, 6))]
    g_parts = torch.autograd.grad(sum(parts), (b["logp"], b["values"]))
    torch.testing.assert_close(sum(parts), whole)
    for a, w in zip(g_parts, g_whole):
        torch.testing.assert_close(a, w)
    # Without the global denom, a mean of micro-batch means is a different loss (the classic bug).
    naive = sum(_losses({k: v[s] for k, v in b.items()}, norm) for s in (slice(0, 2), slice(2, 6))) / 2
    assert not torch.isclose(naive, whole)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), garbage=st.sampled_from([0.0, -1e4, 1e30, float("inf"), float("nan")]))
def test_masked_entries_never_matter(seed, garbage):
    b = random_batch(seed)
    pad = ~b["mask"].bool()
    dirty = {k: (v.masked_fill(pad, garbage) if v.shape == pad.shape and k != "mask" else v) for k, v in b.items()}

    def run(d):
        lp, v = d["logp"].clone().requires_grad_(), d["values"].clone().requires_grad_()
        m = d["mask"]
        out = [ppo_policy_loss(lp, d["old_logp"], d["adv_tok"], m, 0.2),
               ppo_value_loss(v, d["old_values"], d["returns"], m, 0.2),
               grpo_loss(lp, d["old_logp"], d["ref_logp"], d["adv_seq"], m, 0.2, 0.05)]
        sum(loss for loss, _ in out).backward()
        return [loss for loss, _ in out], [s for _, st_ in out for s in st_.values()], lp.grad, v.grad

    clean, messy = run(b), run(dirty)
    for x, y in zip(clean[0] + clean[1], messy[0] + messy[1]):
        torch.testing.assert_close(x, y)
    for x, y in zip(clean[2:], messy[2:]):
        torch.testing.assert_close(x, y)
        assert torch.all(y[pad] == 0)
    # Entropy: finite garbage logits at padding positions change nothing.
    z = torch.randn(*b["mask"].shape, 7, dtype=torch.float64)
    close(entropy_from_logits(z.masked_fill(pad[..., None], 1e4 if garbage != 0 else -3.0), b["mask"]),
          entropy_from_logits(z, b["mask"]))

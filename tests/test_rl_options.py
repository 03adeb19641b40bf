"""The GRPO / RLOO / reward-model options of issue 20 against numbers worked out by hand: DAPO's clip-higher
(epsilon_high) and the clip ends, GRPO's four loss_type normalisations, scale_rewards, RLOO's sequence-level ratio, a
GRPO loss without a reference, and the reward model's centring term."""
from __future__ import annotations

import math

import pytest
import torch

from tether.math.advantages import grpo_advantages, grpo_advantages_reference
from tether.math.losses import bradley_terry_loss, center_penalty
from tether.math.policy_losses import (
    GRPO_LOSS_TYPES,
    LOSS_AGGREGATIONS,
    grpo_loss,
    loss_type_reference,
    max_length_sum,
    ppo_policy_loss,
    sequence_ratio_loss,
)
from tether.stages.rm import RMConfig, pair_losses


def t(*rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(actual, expected, tol=1e-9):
    value = actual.detach().item() if isinstance(actual, torch.Tensor) else actual
    assert value == pytest.approx(expected, abs=tol)


# -- epsilon_high: DAPO clip-higher (Yu et al. 2025, eq. 10) ----------------------------------------------------------
# Four tokens (B = 2, T = 2), old log-probs 0 so ρ = exp(logp): ρ = [1.5, 0.5 | 1.25, 0.7], A = [1, -1 | 1, -1] per
# token, ε_low = 0.2, ε_high = 0.28: the trust region is [0.8, 1.28].
RATIOS = t([1.5, 0.5], [1.25, 0.7])
ADV = t([1.0, -1.0], [1.0, -1.0])


def test_epsilon_high_clips_asymmetrically_by_hand():
    logp = RATIOS.log().requires_grad_()
    loss, stats = ppo_policy_loss(logp, torch.zeros_like(logp), ADV, torch.ones_like(logp), 0.2, clip_eps_high=0.28)
    # per token max(-ρA, -clip(ρ)A):
    #   ρ 1.5,  A  1: max(-1.5, -1.28) = -1.28   clipped high (no gradient)
    #   ρ 0.5,  A -1: max( 0.5,  0.8)  =  0.8    clipped low
    #   ρ 1.25, A  1: max(-1.25, -1.25) = -1.25  inside [0.8, 1.28]: not clipped
    #   ρ 0.7,  A -1: max( 0.7,  0.8)  =  0.8    clipped low
    # loss = (-1.28 + 0.8 - 1.25 + 0.8) / 4 = -0.93 / 4 = -0.2325
    close(loss, -0.2325)
    close(stats["clipfrac"], 3 / 4)
    close(stats["clipfrac/low"], 2 / 4)
    close(stats["clipfrac/high"], 1 / 4)
    loss.backward()
    # only the unclipped token has a gradient: d/d logp (-A ρ / 4) = -1.25 / 4 = -0.3125
    torch.testing.assert_close(logp.grad, t([0.0, 0.0], [-0.3125, 0.0]))


def test_epsilon_high_none_is_the_symmetric_clip():
    logp = RATIOS.log()
    loss, stats = ppo_policy_loss(logp, torch.zeros_like(logp), ADV, torch.ones_like(logp), 0.2)
    # [0.8, 1.2]: ρ 1.25 is now clipped high too: (-1.2 + 0.8 - 1.2 + 0.8) / 4 = -0.2
    close(loss, -0.2)
    close(stats["clipfrac/low"], 0.5)
    close(stats["clipfrac/high"], 0.5)
    same, _ = ppo_policy_loss(logp, torch.zeros_like(logp), ADV, torch.ones_like(logp), 0.2, clip_eps_high=0.2)
    assert torch.equal(loss, same)


def test_grpo_loss_clips_higher_too():
    # ε_high = 0.28, β = 0, sequence mean of the two rows: row 0 (-1.28 + 0.8) / 2 = -0.24, row 1 (-1.25 + 0.8) / 2
    # = -0.225; loss = (-0.24 - 0.225) / 2 = -0.2325 (equal row lengths: the same as the token mean)
    logp = RATIOS.log()
    loss, stats = grpo_loss(logp, torch.zeros_like(logp), None, ADV, torch.ones_like(logp), 0.2, 0.0,
                            clip_eps_high=0.28)
    close(loss, -0.2325)
    assert (float(stats["clipfrac/low"]), float(stats["clipfrac/high"])) == (0.5, 0.25) and "kl" not in stats


# -- GRPO without a reference (kl_coef = 0) ---------------------------------------------------------------------------
def test_grpo_loss_without_reference_equals_beta_zero_with_one():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 5, generator=g, dtype=torch.float64)
    old, ref = logp + 0.1 * torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g)
    mask, adv = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]), t(1.0, -0.5, 2.0)
    for norm in LOSS_AGGREGATIONS:
        with_ref, stats = grpo_loss(logp, old, ref.double(), adv, mask, 0.2, 0.0, norm)
        without, stats_none = grpo_loss(logp, old, None, adv, mask, 0.2, 0.0, norm)
        assert torch.equal(with_ref, without), norm  # β·k3 = 0·k3 adds exactly 0
        assert set(stats) - set(stats_none) == {"kl"}
    with pytest.raises(ValueError, match="beta = 0.04 needs ref_logp"):
        grpo_loss(logp, old, None, adv, mask, 0.2, 0.04)


# -- loss_type: grpo | bnpo | dr_grpo | dapo ---------------------------------------------------------------------------
# Per-token losses of B = 4 responses (T = 3), micro-batches of 2 rows, generation budget max_len = 4:
#   row 0: [1, 2, 3]  3 tokens, sum 6          row 2: [1, 1, .]  2 tokens, sum 2
#   row 1: [4, ., .]  1 token,  sum 4          row 3: [2, 2, 2]  3 tokens, sum 6        (. masked: 99 there)
LOSSES = t([1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [1.0, 1.0, 99.0], [2.0, 2.0, 2.0])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
BY_HAND = {
    "grpo": 2.25,  # mean of the per-response means 2, 4, 1, 2 = 9 / 4 (the same over the two micro-batches: 3, 1.5)
    "bnpo": 2.05,  # micro-batch 1: (6 + 4) / (3 + 1) = 2.5; micro-batch 2: (2 + 6) / (2 + 3) = 1.6; mean 2.05
    "dr_grpo": 1.125,  # 18 / (4 rows x 4) (micro-batches: 10 / 8 = 1.25 and 8 / 8 = 1, mean 1.125)
    "dapo": 2.0,  # 18 / 9 tokens of the whole batch
}


@pytest.mark.parametrize("loss_type", list(GRPO_LOSS_TYPES))
def test_each_loss_type_by_hand(loss_type):
    close(loss_type_reference(LOSSES, MASK, loss_type, micro_size=2, max_len=4), BY_HAND[loss_type])


def test_aggregations_on_the_whole_batch_by_hand():
    close(LOSS_AGGREGATIONS["sequence"](LOSSES, MASK), 2.25)
    close(LOSS_AGGREGATIONS["token"](LOSSES, MASK), 2.0)
    close(max_length_sum(LOSSES, MASK, max_len=4), 1.125)
    close(max_length_sum(LOSSES, MASK), 18 / 12)  # max_len None: the padded width T = 3
    close(max_length_sum(LOSSES, MASK, denom=6.0), 3.0)
    # bnpo on one micro-batch is the token mean of that micro-batch: 1.6 for rows 2-3
    close(LOSS_AGGREGATIONS[GRPO_LOSS_TYPES["bnpo"]](LOSSES[2:], MASK[2:]), 1.6)


def test_only_bnpo_depends_on_the_micro_batch_split():
    one_micro = {name: loss_type_reference(LOSSES, MASK, name, micro_size=4, max_len=4) for name in GRPO_LOSS_TYPES}
    assert one_micro == pytest.approx({"grpo": 2.25, "bnpo": 2.0, "dr_grpo": 1.125, "dapo": 2.0})
    # with a single micro-batch bnpo is dapo; split in two it is 2.05 (above)


# -- scale_rewards: group | batch | none -------------------------------------------------------------------------
SCORES = t(1.0, 2.0, 3.0, 1.0, 1.0, 4.0)  # two groups of 3


def test_scale_rewards_by_hand():
    # centred on the group means 2 and 2: [-1, 0, 1, -1, -1, 2]
    centred = [-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]
    # batch: the 6 scores have mean 2, squared deviations 1 + 0 + 1 + 1 + 1 + 4 = 8, unbiased var 8 / 5 = 1.6
    b = math.sqrt(1.6) + 1e-4
    torch.testing.assert_close(grpo_advantages(SCORES, 3, scale="batch"), t(*[c / b for c in centred]))
    torch.testing.assert_close(grpo_advantages(SCORES, 3, scale="none"), t(*centred))
    # group: std 1 for the first group, sqrt(((-1)² + (-1)² + 2²) / 2) = sqrt(3) for the second
    g1, g2 = 1 + 1e-4, math.sqrt(3) + 1e-4
    torch.testing.assert_close(grpo_advantages(SCORES, 3), t(-1 / g1, 0.0, 1 / g1, -1 / g2, -1 / g2, 2 / g2))
    for scale in ("group", "batch", "none"):
        torch.testing.assert_close(grpo_advantages(SCORES, 3, scale=scale),
                                   grpo_advantages_reference(SCORES, 3, scale=scale))
    with pytest.raises(ValueError, match="scale must be one of group, batch, none"):
        grpo_advantages(SCORES, 3, scale="rank")


def test_batch_scale_reduces_over_ranks():
    # Two ranks each hold one group; rank 0's reduce hook adds rank 1's share of every sum, so rank 0 divides by the
    # whole batch's std, 1.6 ** 0.5, as one process holding both groups would.
    halves = SCORES.view(2, 3)
    out = grpo_advantages(halves[0], 3, scale="batch", reduce=_two_rank_reduce(halves))
    torch.testing.assert_close(out, grpo_advantages(SCORES, 3, scale="batch")[:3])
    torch.testing.assert_close(out, t(-1.0, 0.0, 1.0) / (math.sqrt(1.6) + 1e-4))


def _two_rank_reduce(halves):
    """A reduce for rank 0 of two ranks holding halves[0] and halves[1]: recomputes rank 1's share of each masked
    sum masked_var asks for (the sum of x, or of (x - μ)², and the count)."""
    state = {}

    def reduce(x):
        if x.numel() == 1:  # the count of valid entries
            return x + halves[1].numel()
        total, count = x
        if "mean" not in state:  # first pass: Σx
            state["mean"] = (total + halves[1].sum()) / (count + halves[1].numel())
            return torch.stack([total + halves[1].sum(), count + halves[1].numel()])
        return torch.stack([total + ((halves[1] - state["mean"]) ** 2).sum(), count + halves[1].numel()])

    return reduce


# -- RLOO: one importance ratio per response (Ahmadian et al. 2024) ----------------------------------------------------
# Row 0: token log-ratios [0.1, 0.2, -0.1], all valid: log ρ_0 = 0.2, ρ_0 = e^0.2 = 1.2214; A_0 = 1.
# Row 1: token log-ratios [-0.05, 0.05, (9, masked)]: log ρ_1 = 0, ρ_1 = 1; A_1 = -2.
LOG_RATIO = t([0.1, 0.2, -0.1], [-0.05, 0.05, 9.0])
SEQ_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
SEQ_ADV = t(1.0, -2.0)


def test_sequence_ratio_is_clipped_once_per_response_by_hand():
    logp = LOG_RATIO.clone().requires_grad_()
    loss, stats = sequence_ratio_loss(logp, torch.zeros_like(logp), SEQ_ADV, SEQ_MASK, 0.2)
    # row 0: max(-1.2214, -clip(1.2214, 0.8, 1.2)) = -1.2 (clipped high); row 1: max(2, 2) = 2; loss = 0.8 / 2 = 0.4
    close(loss, 0.4)
    # token-weighted stats: row 0's 3 tokens are clipped, row 1's 2 are not -> 3 / 5
    close(stats["clipfrac"], 0.6)
    close(stats["clipfrac/high"], 0.6)
    close(stats["clipfrac/low"], 0.0)
    close(stats["ratio"], (3 * math.exp(0.2) + 2 * 1.0) / 5)
    close(stats["approxkl"], 0.5 * (0.01 + 0.04 + 0.01 + 0.0025 + 0.0025) / 5)  # ½ mean over the 5 valid tokens
    loss.backward()
    # row 0 clipped: no gradient; row 1: d/d logp_t (-A ρ / 2) = -(-2)(1) / 2 = 1 on its 2 valid tokens
    torch.testing.assert_close(logp.grad, t([0.0, 0.0, 0.0], [1.0, 1.0, 0.0]))


def test_sequence_ratio_with_epsilon_high_by_hand():
    logp = LOG_RATIO.clone().requires_grad_()
    loss, stats = sequence_ratio_loss(logp, torch.zeros_like(logp), SEQ_ADV, SEQ_MASK, 0.2, clip_eps_high=0.3)
    # row 0 now inside [0.8, 1.3]: -e^0.2; loss = (2 - e^0.2) / 2 = 0.38929
    close(loss, (2 - math.exp(0.2)) / 2)
    close(stats["clipfrac"], 0.0)
    loss.backward()
    # every token of row 0 gets -A_0 ρ_0 / 2 = -e^0.2 / 2: the gradient of ρ_0 = exp(Σ_t log-ratio) is shared
    torch.testing.assert_close(logp.grad, t([-math.exp(0.2) / 2] * 3, [1.0, 1.0, 0.0]))


def test_sequence_ratio_differs_from_the_token_ratio():
    # per token (PPO): row 0's tokens have ratios e^0.1, e^0.2, e^-0.1; only e^0.2 = 1.2214 > 1.2 is clipped:
    # (-e^0.1 - 1.2 - e^-0.1) / 3 per token, mean over 5 tokens with row 1's 2 x (2 x ρ):
    token, _ = ppo_policy_loss(LOG_RATIO, torch.zeros_like(LOG_RATIO), SEQ_ADV, SEQ_MASK, 0.2)
    expected = (-math.exp(0.1) - 1.2 - math.exp(-0.1) + 2 * math.exp(-0.05) + 2 * math.exp(0.05)) / 5
    close(token, expected)
    sequence, _ = sequence_ratio_loss(LOG_RATIO, torch.zeros_like(LOG_RATIO), SEQ_ADV, SEQ_MASK, 0.2)
    assert abs(float(sequence) - float(token)) > 0.1


def test_sequence_ratio_on_policy_is_reinforce_with_the_leave_one_out_advantage():
    # ρ = 1 (old = current): the gradient of -Σ_i A_i ρ_i / B is -A_i / B on every valid token of response i
    logp = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    mask, adv = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]), t(0.5, -1.0, 2.0)
    loss, _ = sequence_ratio_loss(logp, logp.detach(), adv, mask, 0.2, denom=4.0)
    close(loss, -(0.5 - 1.0 + 2.0) / 4)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None] / 4 * mask)


def test_sequence_ratio_gradcheck():
    g = torch.Generator().manual_seed(2)
    old = torch.randn(2, 3, dtype=torch.float64, generator=g)
    logp = (old + 0.05 * torch.randn(2, 3, dtype=torch.float64, generator=g)).requires_grad_()
    mask, adv = torch.tensor([[1, 1, 1], [1, 1, 0]]), t(1.0, -1.0)
    assert torch.autograd.gradcheck(lambda x: sequence_ratio_loss(x, old, adv, mask, 0.2, clip_eps_high=0.3)[0],
                                    (logp,))


# -- reward model: center_rewards_coefficient (Eisenstein et al. 2023) -------------------------------------------------
def test_center_penalty_by_hand():
    r_a, r_b = t(1.0, -2.0, 3.0).requires_grad_(), t(0.0, 1.0, -1.0)
    pen = center_penalty(r_a, r_b)
    # (r_a + r_b)² = 1², (-1)², 2² = [1, 1, 4]; mean 2
    torch.testing.assert_close(pen, t(1.0, 1.0, 4.0))
    (0.01 * pen.mean()).backward()
    # d/dr_a of c mean (r_a + r_b)² = 2c (r_a + r_b) / 3 = 0.02 [1, -1, 2] / 3
    torch.testing.assert_close(r_a.grad, t(0.02, -0.02, 0.04) / 3)
    assert center_penalty(t(1.0), t(2.0)) == center_penalty(t(2.0), t(1.0))  # which side is chosen does not matter


def test_rm_pair_losses_add_the_centring_term_only_when_set():
    r_a, r_b, target, margin = t(1.0, -2.0, 3.0), t(0.0, 1.0, -1.0), t(1.0, 0.0, 0.5), t(0.0, 0.0, 0.0)
    plain = bradley_terry_loss(r_a, r_b, target, margin)
    for off in (None, 0.0):
        assert torch.equal(pair_losses(r_a, r_b, target, margin, RMConfig(center_rewards_coefficient=off)), plain)
    centred = pair_losses(r_a, r_b, target, margin, RMConfig(center_rewards_coefficient=0.1))
    # + 0.1 x [1, 1, 4]; the first pair by hand: -log σ(1) + 0.1 = 0.313262 + 0.1
    torch.testing.assert_close(centred, plain + t(0.1, 0.1, 0.4))
    close(centred[0], math.log1p(math.exp(-1.0)) + 0.1)

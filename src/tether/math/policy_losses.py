"""Policy and value losses of online RLHF (PPO, GRPO), as pure torch functions.

Shapes: B responses, T response positions, V vocabulary; `mask` (B, T) is 1 on valid response tokens and may
be bool or 0/1. Values under mask == 0 never change a loss, its gradient or its stats (they are selected away
with `torch.where` before any arithmetic). Gradients flow only through `logp`, `values` or `logits`: old
log-probs, reference log-probs, advantages and returns are detached here.

Every loss returns (loss, stats): stats are detached 0-dim tensors under the fixed names of STYLE.md
(clipfrac, approxkl, ...), averaged over the valid tokens of the batch given, so logging costs no sync here.

Batch splitting: each loss takes `norm` (a LOSS_AGGREGATIONS name) and `denom`. With denom=None the loss is a
mean over this batch. To split an optimizer batch into micro-batches with gradient accumulation, pass
denom = the count over the *whole* optimizer batch (valid tokens for "token", sequences for "sequence") and
sum the micro-batch losses: loss and gradients then equal those of the whole batch (tests check this).
Under DDP, which averages gradients over W ranks, pass the global count divided by W.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.math.advantages import masked_mean
from tether.math.kl import kl_k3


# -- aggregation of per-token losses ---------------------------------------------------------------------
def token_mean(per_token: torch.Tensor, mask: torch.Tensor, denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Σ_{b,t valid} ℓ[b, t] / denom, denom = number of valid tokens by default.

    Every token weighs the same, so long responses weigh more: the PPO losses of TRL and Huang et al. 2024,
    and the token-level loss of DAPO (Yu et al. 2025). Shapes: (B, T), (B, T) -> scalar.
    """
    m = mask.bool()
    return torch.where(m, per_token, 0).sum() / (m.sum() if denom is None else denom)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor,
                  denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Σ_b (1/|o_b| Σ_t ℓ[b, t]) / denom, denom = B by default: a token mean per response, then a mean over
    responses, as in the GRPO objective (Shao et al. 2024, eq. 3). Every response weighs the same, so a
    token of a short response weighs more (the length bias Dr. GRPO points out; Liu et al. 2025 remove it by
    dividing the token sum by a constant instead). A row with no valid token contributes 0 but still counts
    in the default denom. Shapes: (B, T), (B, T) -> scalar.
    """
    m = mask.bool()
    per_seq = torch.where(m, per_token, 0).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # (B,)
    return per_seq.sum() / (m.shape[0] if denom is None else denom)


def max_length_sum(per_token: torch.Tensor, mask: torch.Tensor, denom: float | torch.Tensor | None = None,
                   max_len: int | None = None) -> torch.Tensor:
    """Σ_{b,t valid} ℓ[b, t] / denom, denom = B · max_len by default (max_len None: T, the padded width).

    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training: a critical perspective"): dividing by each
    response's length (sequence_mean) favours short right answers and long wrong ones; a constant denominator,
    the batch size times the generation budget (TRL's max_completion_length), weighs every token alike without
    making the weight depend on how many tokens the batch happened to hold. Shapes: (B, T), (B, T) -> scalar.
    """
    m = mask.bool()
    if denom is None:
        denom = m.shape[0] * (m.shape[1] if max_len is None else max_len)
    return torch.where(m, per_token, 0).sum() / denom


LOSS_AGGREGATIONS = {"token": token_mean, "sequence": sequence_mean, "max_length": max_length_sum}
"""name -> aggregate(per_token (B, T), mask (B, T), denom=None) -> scalar."""

GRPO_LOSS_TYPES = {"grpo": "sequence", "bnpo": "token", "dr_grpo": "max_length", "dapo": "token"}
"""GRPO `loss_type` (TRL's names) -> its LOSS_AGGREGATIONS entry. bnpo and dapo are the same token mean and differ
only in the batch it is over: bnpo divides by the tokens of the *local micro-batch* (then averages the micro-batches,
as TRL's per-device batch under gradient accumulation), dapo by the tokens of the whole optimizer batch (Yu et al.
2025, DAPO §3.3, "token-level policy gradient loss"). `loss_type_reference` spells out all four on a split batch."""


def loss_type_reference(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, micro_size: int,
                        max_len: int) -> float:
    """Slow reference: the loss of one optimizer step over B rows split into micro-batches of `micro_size` rows
    (gradient accumulation, one process), as TRL's GRPOTrainer computes each `loss_type`, in pure Python:

        grpo     1/M Σ_micro  mean_{b in micro} (Σ_t ℓ[b,t] / |o_b|)
        bnpo     1/M Σ_micro  Σ_{b in micro, t} ℓ[b,t] / Σ_{b in micro} |o_b|
        dr_grpo  1/M Σ_micro  Σ_{b in micro, t} ℓ[b,t] / (micro_size · max_len)
        dapo         Σ_{b,t} ℓ[b,t] / Σ_b |o_b|                       (the whole batch's tokens)

    with M = B / micro_size micro-batches. Shapes: per_token, mask (B, T)."""
    rows, valid = per_token.tolist(), mask.bool().tolist()
    lengths = [sum(v) for v in valid]
    sums = [sum(x for x, v in zip(r, vs) if v) for r, vs in zip(rows, valid)]
    micros = [range(i, i + micro_size) for i in range(0, len(rows), micro_size)]
    if loss_type == "dapo":
        return sum(sums) / sum(lengths)
    per_micro = {
        "grpo": lambda b: sum(sums[i] / max(lengths[i], 1) for i in b) / len(b),
        "bnpo": lambda b: sum(sums[i] for i in b) / max(sum(lengths[i] for i in b), 1),
        "dr_grpo": lambda b: sum(sums[i] for i in b) / (len(b) * max_len),
    }[loss_type]
    return sum(per_micro(b) for b in micros) / len(micros)


# -- PPO ---------------------------------------------------------------------------------------------------
def _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps, clip_eps_high=None):
    """Per-token -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) = max(-ρA, -clip(ρ)A), with ρ = exp(logp - old_logp);
    ε_high None: ε_low (symmetric).

    advantages: (B, T), or (B,) broadcast over each response's tokens. Returns the per-token loss, ρ, log ρ and
    where the clipped branch is active (its gradient is 0 there) at the low end (A < 0, ρ < 1 - ε_low) and at the
    high end (A > 0, ρ > 1 + ε_high), all (B, T) and 0/False under the mask.
    """
    m = mask.bool()
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None]  # (B, 1): one advantage per response (GRPO, RLOO)
    adv = torch.where(m, adv, 0)  # (B, T)
    log_ratio = torch.where(m, logp - old_logp.detach(), 0)  # (B, T)
    ratio = torch.exp(log_ratio)
    return _clip(ratio, adv, m, clip_eps, clip_eps_high) + (log_ratio,)


def _clip(ratio, adv, valid, clip_eps, clip_eps_high):
    """(loss, ratio, clipped low, clipped high) of the clipped surrogate at ratio ρ and advantage A, same shapes."""
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + high)
    # The clipped branch wins strictly only outside the trust region on the side A pushes to: ρ < 1 - ε_low with
    # A < 0, ρ > 1 + ε_high with A > 0 (TRL's clip_ratio/low_mean and high_mean).
    active = valid & (clipped > unclipped)
    return torch.maximum(unclipped, clipped), ratio, active & (adv < 0), active & (adv > 0)


def _ratio_stats(ratio, log_ratio, clipped_low, clipped_high, mask) -> dict:
    with torch.no_grad():
        low, high = masked_mean(clipped_low.to(ratio.dtype), mask), masked_mean(clipped_high.to(ratio.dtype), mask)
        return {
            "clipfrac": masked_mean((clipped_low | clipped_high).to(ratio.dtype), mask),
            "clipfrac/low": low,
            "clipfrac/high": high,
            # Huang et al. 2024 log approxkl = ½ mean (log ρ)², the k2 estimate of KL(π_old || π).
            "approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
            "ratio": masked_mean(ratio, mask),
        }


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float, norm: str = "token", denom: float | torch.Tensor | None = None,
                    clip_eps_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss:

        ρ_t = exp(log π(a_t) - log π_old(a_t))
        L   = mean_t  -min(ρ_t A_t, clip(ρ_t, 1 - ε_low, 1 + ε_high) A_t)

    ε_low = clip_eps; ε_high = clip_eps_high, or clip_eps when None (symmetric, the paper). A larger ε_high is
    DAPO's "clip-higher" (Yu et al. 2025, §3.1: ε_low 0.2, ε_high 0.28): low-probability tokens with A > 0 may
    grow further before the clip stops them, which keeps entropy from collapsing.
    Mean over valid tokens by default (norm="token", as TRL and Huang et al. 2024). Stats: clipfrac (share of valid
    tokens where the clipped branch is strictly the larger loss, i.e. gets no gradient) = clipfrac/low (A < 0,
    ρ < 1 - ε_low) + clipfrac/high (A > 0, ρ > 1 + ε_high), approxkl (½ mean (log ρ)²), ratio (mean ρ).
    Shapes: logp, old_logp, mask (B, T); advantages (B, T) or (B,).
    """
    per_token, ratio, low, high, log_ratio = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps,
                                                                clip_eps_high)
    loss = LOSS_AGGREGATIONS[norm](per_token, mask, denom)
    return loss, _ratio_stats(ratio, log_ratio, low, high, mask)


def sequence_ratio_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_eps: float, denom: float | torch.Tensor | None = None,
                        clip_eps_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate with ONE importance ratio per response, the RLOO of Ahmadian et al. 2024 ("Back to
    Basics"): the whole generation is a single action, so the ratio is that of its probability):

        log ρ_i = Σ_t (log π(a_{i,t}) - log π_old(a_{i,t}))          (a product of the token ratios)
        L       = Σ_i -min(ρ_i Â_i, clip(ρ_i, 1 - ε_low, 1 + ε_high) Â_i) / denom        (denom = B by default)

    One clip per response: either the whole response gets its gradient Â_i ∇log π(o_i) weighted by ρ_i, or none of
    it does. A product of many token ratios moves fast: after a few epochs over long responses ρ_i can be far above
    1 (inf in float32 past log ρ ≈ 88), and with Â_i < 0 the unclipped branch keeps it, as in PPO; the run's
    non-finite guard then skips that update (TRL's former RLOOTrainer behaves the same). Â (B,) per response. Stats as ppo_policy_loss, token-weighted so that micro-batches add up exactly:
    clipfrac (/low, /high) is the share of valid tokens whose response is clipped, ratio the token-weighted mean
    ρ_i, approxkl the per-token ½ mean (log ρ_t)² (comparable across algorithms). Shapes: logp, old_logp, mask
    (B, T); advantages (B,) -> scalar.
    """
    m = mask.bool()
    log_ratio = torch.where(m, logp - old_logp.detach(), 0)  # (B, T)
    seq_log_ratio = log_ratio.sum(dim=1)  # (B,)
    has_tokens = m.any(dim=1)  # (B,) an empty row has ρ = 1 and contributes 0
    adv = torch.where(has_tokens, advantages.detach(), 0)  # (B,)
    per_seq, ratio, low, high = _clip(torch.exp(seq_log_ratio), adv, has_tokens, clip_eps, clip_eps_high)  # (B,)
    loss = per_seq.sum() / (m.shape[0] if denom is None else denom)
    spread = torch.ones_like(log_ratio, dtype=torch.bool)  # (B, T): each response's value on each of its tokens
    stats = _ratio_stats(ratio[:, None] * spread, log_ratio, low[:, None] & spread, high[:, None] & spread, m)
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range: float, norm: str = "token",
                   denom: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped value loss of the OpenAI baselines PPO2 / lm-human-preferences code (Huang et al. 2024):

        V^clip = V_old + clip(V - V_old, -c, c)
        L      = ½ mean_t max((V - R)², (V^clip - R)²)

    The max makes the update pessimistic: moving V more than c away from V_old earns no further reduction.
    Stats: vf_clipfrac (share of valid tokens where the clipped term is strictly larger). Shapes: (B, T).
    """
    m = mask.bool()
    values = torch.where(m, values, 0)
    old_values = torch.where(m, old_values.detach(), 0)
    returns = torch.where(m, returns.detach(), 0)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss_unclipped, loss_clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * LOSS_AGGREGATIONS[norm](torch.maximum(loss_unclipped, loss_clipped), mask, denom)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)}
    return loss, stats


# -- GRPO --------------------------------------------------------------------------------------------------
def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, beta: float, norm: str = "sequence",
              denom: float | torch.Tensor | None = None, clip_eps_high: float | None = None
              ) -> tuple[torch.Tensor, dict]:
    """GRPO loss (Shao et al. 2024, DeepSeekMath eqs. 3-4), the negated objective:

        ℓ_{i,t} = -min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1 - ε_low, 1 + ε_high) Â_i) + β k3_{i,t}
        k3      = π_ref/π - log(π_ref/π) - 1            (per token, kl.kl_k3)

    The KL to the reference is in the loss (not in the reward as in PPO); on-policy its gradient is that of
    the forward KL(π_ref || π) (see kl.py). Â_i (B,) is one advantage per response (grpo_advantages or
    rloo_advantages), broadcast over its tokens; (B, T) is accepted too. With a single update per rollout
    pass old_logp = logp.detach(): ρ = 1 and the surrogate's gradient is Â ∇log π. ε_high: clip_eps_high, or
    clip_eps when None (DAPO's clip-higher when larger, see ppo_policy_loss).

    norm: a LOSS_AGGREGATIONS name, "sequence" by default (the paper: token mean per response, then mean over
    responses); GRPO_LOSS_TYPES maps TRL's loss_type names to these. beta = 0 with ref_logp None drops the KL term
    (no reference model at all; the loss equals the beta = 0 loss with one). Stats: clipfrac (/low, /high),
    approxkl, ratio as ppo_policy_loss, and kl (mean k3 over valid tokens; absent without ref_logp).
    Shapes: logp, old_logp, ref_logp, mask (B, T); advantages (B,) or (B, T).
    """
    if ref_logp is None and beta != 0:
        raise ValueError(f"grpo_loss: beta = {beta} needs ref_logp")
    m = mask.bool()
    per_token, ratio, low, high, log_ratio = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps,
                                                                clip_eps_high)
    stats = _ratio_stats(ratio, log_ratio, low, high, mask)
    if ref_logp is not None:
        kl = kl_k3(torch.where(m, logp, 0), torch.where(m, ref_logp.detach(), 0))  # (B, T), 0 under the mask
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    return LOSS_AGGREGATIONS[norm](per_token, mask, denom), stats


# -- entropy and the EOS rule --------------------------------------------------------------------------------
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H[b, t] = -Σ_v p log p with p = softmax(logits[b, t]), in float32 or wider; -inf logits (filtered
    tokens) count 0. Shapes: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0)).sum(dim=-1)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy of the policy over valid tokens (a collapse signal to log as "entropy").
    Shapes: logits (B, T, V), mask (B, T) -> scalar."""
    return masked_mean(token_entropy(logits), mask)


def eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """score - penalty for responses that never emitted EOS, the score itself for the others (TRL's
    `missing_eos_penalty`: a positive amount subtracted, so the policy cannot profit from rambling to the length
    budget). Shapes: scores, has_eos (B,) -> (B,)."""
    ended = has_eos.to(scores.device).bool()  # the rollout's device; scores may come back from the CPU
    return torch.where(ended, scores, scores - penalty)


def eos_replacement(scores: torch.Tensor, has_eos: torch.Tensor, value: float) -> torch.Tensor:
    """Scores of responses that never emitted EOS replaced by the fixed `value` (e.g. -1.0).

    Huang et al. 2024 ("The N+ implementation details of RLHF with PPO", TL;DR summarisation; TRL's former
    `penalty_reward_value`): a response truncated at the length budget gets score -1 whatever the reward model
    says, so it learns to finish. Shapes: scores, has_eos (B,) -> (B,).
    """
    ended = has_eos.to(scores.device).bool()
    return torch.where(ended, scores, torch.as_tensor(value, dtype=scores.dtype, device=scores.device))

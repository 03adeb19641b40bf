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


LOSS_AGGREGATIONS = {"token": token_mean, "sequence": sequence_mean}
"""name -> aggregate(per_token (B, T), mask (B, T), denom=None) -> scalar."""


# -- PPO ---------------------------------------------------------------------------------------------------
def _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps):
    """Per-token -min(ρA, clip(ρ, 1-ε, 1+ε)A) = max(-ρA, -clip(ρ)A), with ρ = exp(logp - old_logp).

    advantages: (B, T), or (B,) broadcast over each response's tokens. Returns the per-token loss, ρ, log ρ
    and where the clipped branch is active (its gradient is 0 there), all (B, T) and 0/False under the mask.
    """
    m = mask.bool()
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None]  # (B, 1): one advantage per response (GRPO, RLOO)
    adv = torch.where(m, adv, 0)  # (B, T)
    log_ratio = torch.where(m, logp - old_logp.detach(), 0)  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped), ratio, log_ratio, m & (clipped > unclipped)


def _ratio_stats(ratio, log_ratio, is_clipped, mask) -> dict:
    with torch.no_grad():
        return {
            "clipfrac": masked_mean(is_clipped.to(ratio.dtype), mask),
            # Huang et al. 2024 log approxkl = ½ mean (log ρ)², the k2 estimate of KL(π_old || π).
            "approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
            "ratio": masked_mean(ratio, mask),
        }


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float, norm: str = "token",
                    denom: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss:

        ρ_t = exp(log π(a_t) - log π_old(a_t))
        L   = mean_t  -min(ρ_t A_t, clip(ρ_t, 1 - ε, 1 + ε) A_t)

    mean over valid tokens by default (norm="token", as TRL and Huang et al. 2024). Stats: clipfrac (share of
    valid tokens where the clipped branch is strictly the larger loss, i.e. gets no gradient), approxkl
    (½ mean (log ρ)²), ratio (mean ρ). Shapes: logp, old_logp, mask (B, T); advantages (B, T) or (B,).
    """
    per_token, ratio, log_ratio, is_clipped = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps)
    loss = LOSS_AGGREGATIONS[norm](per_token, mask, denom)
    return loss, _ratio_stats(ratio, log_ratio, is_clipped, mask)


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
def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, beta: float, norm: str = "sequence",
              denom: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """GRPO loss (Shao et al. 2024, DeepSeekMath eqs. 3-4), the negated objective:

        ℓ_{i,t} = -min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1 - ε, 1 + ε) Â_i) + β k3_{i,t}
        k3      = π_ref/π - log(π_ref/π) - 1            (per token, kl.kl_k3)

    The KL to the reference is in the loss (not in the reward as in PPO); on-policy its gradient is that of
    the forward KL(π_ref || π) (see kl.py). Â_i (B,) is one advantage per response (grpo_advantages or
    rloo_advantages), broadcast over its tokens; (B, T) is accepted too. With a single update per rollout
    pass old_logp = logp.detach(): ρ = 1 and the surrogate's gradient is Â ∇log π.

    norm: "sequence" (default, the paper: token mean per response, then mean over responses) or "token"
    (one mean over all valid tokens of the batch, as DAPO; long responses then weigh more). beta = 0 drops
    the KL term (and the reference model). Stats: clipfrac, approxkl, ratio as ppo_policy_loss, and kl
    (mean k3 over valid tokens). Shapes: logp, old_logp, ref_logp, mask (B, T); advantages (B,) or (B, T).
    """
    m = mask.bool()
    per_token, ratio, log_ratio, is_clipped = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps)
    kl = kl_k3(torch.where(m, logp, 0), torch.where(m, ref_logp.detach(), 0))  # (B, T), 0 under the mask
    loss = LOSS_AGGREGATIONS[norm](per_token + beta * kl, mask, denom)
    stats = _ratio_stats(ratio, log_ratio, is_clipped, mask)
    stats["kl"] = masked_mean(kl.detach(), mask)
    return loss, stats


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
    """Scores of responses that never emitted EOS replaced by the fixed value `penalty` (e.g. -1.0).

    Huang et al. 2024 ("The N+ implementation details of RLHF with PPO", TL;DR summarisation): a response
    truncated at the length budget gets score `penalty_reward_value` = -1 whatever the reward model says,
    so the policy cannot profit from rambling and learns to finish. Note `penalty` is the score given, not
    an amount subtracted (TRL's `missing_eos_penalty` subtracts instead). Shapes: scores, has_eos (B,) -> (B,).
    """
    ended = has_eos.to(scores.device).bool()  # the rollout's device; scores may come back from the CPU
    return torch.where(ended, scores, torch.as_tensor(penalty, dtype=scores.dtype, device=scores.device))

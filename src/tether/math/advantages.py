"""Rewards and advantages for online RLHF (PPO, GRPO, RLOO), as pure torch functions.

Shapes: B responses, T response positions; `mask` (B, T) is 1 on valid response tokens (1s, then 0s after
EOS) and may be bool or 0/1 of any dtype. Values under mask == 0 never change a result (they are selected
away with `torch.where`, so even inf or nan there is harmless), and outputs are 0 there.

Each vectorised function has a slow pure-Python `*_reference` beside it; tests check they agree.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

# -- masked statistics (TRL / lm-human-preferences semantics) -------------------------------------------
# `reduce`, where a function takes it, sums a tensor over the processes that each hold part of the batch
# (tether.distributed.reduce_sum under torchrun): the statistics are then those of the whole batch, as if one
# process held it. None: this process holds the whole batch.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None,
                reduce: Reduce | None = None) -> torch.Tensor:
    """Σ mask·x / Σ mask over `dim` (all dims if None). x, mask: the same shape. nan where nothing is valid.
    With `reduce` (dim None only), both sums are over the whole distributed batch."""
    m = mask.bool()
    x = torch.where(m, x, 0)
    if dim is None and reduce is not None:
        total, count = reduce(torch.stack([x.sum(), m.sum().to(x.dtype)]))
        return total / count
    if dim is None:
        return x.sum() / m.sum()
    return x.sum(dim) / m.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, reduce: Reduce | None = None
               ) -> torch.Tensor:
    """Variance of the valid entries of x (all of them pooled): Σ mask (x - μ)² / (n - 1), or / n if biased.

    Two passes (the mean first), also with `reduce`: Σx² - nμ² would lose the variance to cancellation when
    |μ| >> σ. Raises ValueError when unbiased and fewer than 2 entries are valid (TRL raises too; a nan here would
    only surface later as a nan loss). Shapes: x, mask (...) -> scalar.
    """
    mean = masked_mean(x, mask, reduce=reduce)
    var = masked_mean((x - mean) ** 2, mask, reduce=reduce)
    if unbiased:
        count = mask.bool().sum()
        n = int(count if reduce is None else reduce(count))
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 valid entries, got {n}")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Reduce | None = None) -> torch.Tensor:
    """(x - μ) / sqrt(σ² + eps) over the valid entries (unbiased σ², as TRL); 0 where mask == 0.

    shift_mean=False adds μ back, so only the scale changes: lm-human-preferences and TRL whiten *rewards*
    this way (the sign of a reward means something) and whiten *advantages* with shift_mean=True.
    With `reduce`, μ and σ² are those of the whole distributed batch. Shapes: x, mask (B, T) -> (B, T).
    """
    mean, var = masked_mean(x, mask, reduce=reduce), masked_var(x, mask, reduce=reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       reduce: Reduce | None = None) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over valid tokens (biased variances): 1 is a perfect critic, 0 one that
    predicts the mean, < 0 worse than that; nan when Var(R) = 0. Shapes: (B, T) -> scalar."""
    var_r = masked_var(returns, mask, unbiased=False, reduce=reduce)
    return 1 - masked_var(returns - values, mask, unbiased=False, reduce=reduce) / var_r


# -- PPO: per-token rewards and GAE ----------------------------------------------------------------------
def per_token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float | torch.Tensor) -> torch.Tensor:
    """The PPO reward of Ziegler et al. 2019, R = r - β log(π/π_ref) (also Stiennon et al. 2020), per token:

        r[b, t] = -β kl[b, t]  +  score[b] · [t == last valid token of row b]

    kl is a per-token estimate, usually k1 = log π - log π_ref (kl.kl_k1), as in lm-human-preferences and
    the TL;DR reproduction of Huang et al. 2024. A row with no valid token gets all zeros (its score is
    dropped). Shapes: score (B,), kl (B, T), mask (B, T) -> (B, T).
    """
    m = mask.bool()
    pos = torch.arange(m.shape[1], device=m.device)  # (T,)
    last = torch.where(m, pos, -1).amax(dim=1)  # (B,) index of the last valid token, -1 if none
    at_last = pos == last[:, None]  # (B, T)
    return torch.where(m, -kl_coef * kl, 0) + torch.where(at_last, score[:, None], 0)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over response tokens:

        δ_t = r_t + γ V_{t+1} - V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t

    with V_{t+1} = 0 and A_{t+1} = 0 after the last valid token (the episode ends at EOS: no bootstrap).
    The mask must be a prefix (1s then 0s); a 0 inside a row would end the episode there. Vectorised over
    B, a backward loop over T. Pass detached values. Shapes: rewards, values, mask (B, T) -> advantages,
    returns (B, T), 0 where mask == 0.
    """
    m = mask.bool()
    rewards, values = torch.where(m, rewards, 0), torch.where(m, values, 0)
    T = rewards.shape[1]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T), 0 past EOS
    next_valid = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)  # (B, T)
    deltas = rewards + gamma * next_values - values  # (B, T)
    last = torch.zeros_like(deltas[:, 0])  # (B,) A_{t+1}
    advs = []
    for t in reversed(range(T)):
        last = deltas[:, t] + gamma * lam * torch.where(next_valid[:, t], last, 0)
        advs.append(last)
    advantages = torch.where(m, torch.stack(advs[::-1], dim=1), 0)  # (B, T)
    return advantages, torch.where(m, advantages + values, 0)


def gae_reference(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                  lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow GAE from the explicit sum A_t = Σ_l (γλ)^l δ_{t+l} over the rest of the episode (pure Python)."""
    r, v, m = rewards.tolist(), values.tolist(), mask.bool().tolist()
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if not m[b][t]:
                continue
            end = t
            while end < T and m[b][end]:
                end += 1
            a = 0.0
            for k in range(t, end):
                v_next = v[b][k + 1] if k + 1 < end else 0.0
                a += (gamma * lam) ** (k - t) * (r[b][k] + gamma * v_next - v[b][k])
            adv[b][t], ret[b][t] = a, a + v[b][t]
    kw = dict(dtype=rewards.dtype, device=rewards.device)
    return torch.tensor(adv, **kw), torch.tensor(ret, **kw)


# -- group baselines: GRPO and RLOO ---------------------------------------------------------------------
# scores (N,) hold N = n_groups * group_size sequence-level scores, each group's samples contiguous (all
# answers to one prompt side by side). Both return per-sequence advantages (N,); the losses broadcast them
# over the tokens of each response.
def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"group_size must be >= 2 and divide N = {scores.numel()}, got {group_size}")
    return scores.view(-1, group_size)  # (G, k)


def grpo_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO outcome advantages (Shao et al. 2024, DeepSeekMath §4.1.2): Â_i = (s_i - mean_g) / (std_g + eps).

    std_g is the unbiased (Bessel) std of the group, as in TRL; eps = 1e-4 as TRL. scale=False drops the
    division (Liu et al. 2025, "Understanding R1-Zero-like training", Dr. GRPO): groups whose scores barely
    differ no longer get their noise blown up. Shapes: (N,) -> (N,).
    """
    g = _groups(scores, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def grpo_advantages_reference(scores: torch.Tensor, group_size: int, eps: float = 1e-4,
                              scale: bool = True) -> torch.Tensor:
    """Slow GRPO advantages, one group at a time in pure Python."""
    s, out = scores.tolist(), []
    for i in range(0, len(s), group_size):
        grp = s[i:i + group_size]
        mean = sum(grp) / len(grp)
        std = (sum((x - mean) ** 2 for x in grp) / (len(grp) - 1)) ** 0.5
        out += [(x - mean) / (std + eps) if scale else x - mean for x in grp]
    return torch.tensor(out, dtype=scores.dtype, device=scores.device)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019):

        Â_i = s_i - 1/(k-1) Σ_{j≠i} s_j        ( = k/(k-1) (s_i - mean_g) )

    The baseline excludes the sample itself, so the estimate stays unbiased. For RLOO with a KL penalty,
    pass scores that already include it (e.g. score - β Σ_t k1). Shapes: (N,) -> (N,).
    """
    g = _groups(scores, group_size)
    loo_mean = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)  # (G, k)
    return (g - loo_mean).reshape(-1)


def rloo_advantages_reference(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Slow RLOO advantages: each score minus the plain mean of the other k-1 of its group."""
    s, out = scores.tolist(), []
    for i in range(0, len(s), group_size):
        grp = s[i:i + group_size]
        out += [x - sum(grp[:j] + grp[j + 1:]) / (len(grp) - 1) for j, x in enumerate(grp)]
    return torch.tensor(out, dtype=scores.dtype, device=scores.device)

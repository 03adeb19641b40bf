"""The update half of online RL (tether.stages.online): the experience record and its metrics, one policy (and
critic) forward, per algorithm (PPO, GRPO, RLOO) how advantages are made and which loss trains on them, and the
clipped updates over minibatches.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from tether import distributed
from tether.math.advantages import (
    explained_variance,
    gae,
    grpo_advantages,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    rloo_advantages,
)
from tether.guard import NonFiniteGuard
from tether.logprobs import read_last_columns
from tether.math.kl import KL_ESTIMATORS, kl_k1, kl_k3
from tether.math.policy_losses import (
    GRPO_LOSS_TYPES,
    LOSS_AGGREGATIONS,
    grpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_ratio_loss,
    token_entropy,
)
from tether.rollout import scale_logits, token_logprobs
from tether.stages.online.config import OnlineConfig

# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Experience:
    """One step's N = rollout_batch x group_size samples, each group's samples contiguous; R response steps.

    Filled in order: the rollout (ids, masks), scores (step 3), log-probs and values (step 4), advantages and
    returns (step 5). `select` takes rows, e.g. a minibatch.
    """

    prompt_ids: torch.Tensor
    """(N, P) long, left-padded prompts."""
    prompt_mask: torch.Tensor
    """(N, P) long, 1 on prompt tokens."""
    response_ids: torch.Tensor
    """(N, R) long, sampled tokens then pad after EOS."""
    response_mask: torch.Tensor
    """(N, R) long, 1 on sampled tokens up to and including EOS."""
    has_eos: torch.Tensor
    """(N,) bool, the response ended with EOS within max_new_tokens."""
    scores: torch.Tensor
    """(N,) float, the score trained on: the source's score, less missing_eos_penalty (or missing_eos_score instead)
    for rows without EOS."""
    logprobs: torch.Tensor | None = None
    """(N, R) log π_old of the sampled tokens (temperature-scaled), 0 where masked."""
    ref_logprobs: torch.Tensor | None = None
    """(N, R) log π_ref of the sampled tokens, 0 where masked; None without a reference (kl_coef 0)."""
    values: torch.Tensor | None = None
    """(N, R) old values V(state before token t) (ppo); None without a critic."""
    advantages: torch.Tensor | None = None
    """(N, R) per token (ppo) or (N,) per response (grpo, rloo)."""
    returns: torch.Tensor | None = None
    """(N, R) value targets (ppo); None without a critic."""

    def select(self, rows) -> Experience:
        """The rows `rows` (a slice, or a (n,) long tensor) of every field."""
        return Experience(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                             for f in fields(self)})


def rollout_metrics(exp: Experience, non_score: torch.Tensor) -> dict:
    """KL, reward and length signals of the step's samples (before the update), over every rank's samples."""
    mask, cat = exp.response_mask, distributed.gather_cat
    ev = float(explained_variance(exp.values, exp.returns, mask, reduce=distributed.reducer())) \
        if exp.values is not None else math.nan
    scores, non_score = cat(exp.scores), cat(non_score)  # (N,), (N,) over all ranks

    def kl(estimator):  # None without a reference: a 0 would read as "the policy has not moved"
        return None if exp.ref_logprobs is None else \
            float(cat(seq_sum(estimator(exp.logprobs, exp.ref_logprobs), mask)).mean())

    return {"non_score_reward": float(non_score.mean()), "rlhf_reward": float((scores + non_score).mean()),
            "kl/k1": kl(kl_k1), "kl/k3": kl(kl_k3),
            "explained_variance": ev if math.isfinite(ev) else None,  # undefined when the returns do not vary
            "response_length": float(cat(mask.sum(1).float()).mean()),
            "eos_rate": float(cat(exp.has_eos.float()).mean())}


@dataclass
class PolicyOutput:
    """One forward of the policy (and critic) over [prompt; response] rows."""

    logprobs: torch.Tensor
    """(B, R) log-probs of the response tokens under softmax(logits / temperature), 0 where masked."""
    logits: torch.Tensor
    """(B, R, V) temperature-scaled logits predicting each response token."""
    values: torch.Tensor | None
    """(B, R) V(state before token t), or None without a critic."""


def joined_inputs(rows: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of prompt + response, each (B, P + R); left-padded prompts count from
    their first real token."""
    ids = torch.cat([rows.prompt_ids, rows.response_ids], dim=1)  # (B, P + R)
    mask = torch.cat([rows.prompt_mask, rows.response_mask], dim=1).long()  # (B, P + R)
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def critic_values(critic: nn.Module | None, rows: Experience) -> torch.Tensor | None:
    """(B, R) values of `rows` from a critic that does not read the policy (a separate value model), None without
    a critic: no policy pass (the old log-probs then come from the sampler)."""
    if critic is None:
        return None
    ids, mask, position = joined_inputs(rows)
    return critic(None, ids, mask, position)[:, rows.prompt_ids.size(1) - 1:-1]  # (B, R)


def policy_forward(policy, critic: nn.Module | None, rows: Experience, temperature: float) -> PolicyOutput:
    """Log-probs, scaled logits and (with a critic) values of `rows` in one policy pass, under the caller's grad
    mode. The log-probs equal `rollout.logprobs_of` (a test checks it); this pass also returns hidden states."""
    P, R = rows.prompt_ids.size(1), rows.response_ids.size(1)
    ids, mask, position = joined_inputs(rows)
    wants_hidden = critic is not None and critic.reads_policy
    with read_last_columns(policy, ids, R + 1):  # all a critic and the head read (tether.last_layer)
        out = policy(input_ids=ids, attention_mask=mask, position_ids=position, logits_to_keep=R + 1,
                     output_hidden_states=wants_hidden)
    scaled = scale_logits(out.logits[:, :-1, :], temperature)  # (B, R, V): position P - 1 + t predicts token t
    logprobs = token_logprobs(scaled, rows.response_ids) * rows.response_mask  # (B, R)
    values = None
    if critic is not None:
        hidden = out.hidden_states[-1] if wants_hidden else None  # (B, P + R, H), after the final norm
        values = critic(hidden, ids, mask, position)[:, P - 1:-1]  # (B, R)
    return PolicyOutput(logprobs, scaled, values)


# ---------------------------------------------------------------------------------------------
# Advantages and losses per algorithm


def seq_sum(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t over the valid tokens of each response: (N, R) -> (N,)."""
    return torch.where(mask.bool(), per_token, 0).sum(1)


def reference_kl(exp: Experience, estimator: str) -> torch.Tensor:
    """(N, R) per-token KL estimate of the samples to π_ref (tether.math.kl); zeros without a reference, where β = 0
    multiplies it (a loss or reward term of exactly 0 either way)."""
    if exp.ref_logprobs is None:
        return torch.zeros_like(exp.logprobs)
    return KL_ESTIMATORS[estimator](exp.logprobs, exp.ref_logprobs)


def _whiten_rows(adv: torch.Tensor, whiten: bool) -> torch.Tensor:
    """(N,) advantages whitened over the batch (all ranks' rows under torchrun) when `whiten`."""
    ones = torch.ones_like(adv, dtype=torch.bool)
    return masked_whiten(adv, ones, reduce=distributed.reducer()) if whiten else adv


def ppo_advantages(exp: Experience, cfg: OnlineConfig, kl_coef: float):
    """r_t = score·[t = last] - β kl_t (advantages.per_token_rewards), optional reward whitening, GAE. Whitening
    is over the valid tokens of the whole batch (all ranks' rows under torchrun)."""
    mask, reduce = exp.response_mask, distributed.reducer()
    kl = reference_kl(exp, cfg.kl_estimator)  # (N, R)
    rewards = per_token_rewards(exp.scores, kl, mask, kl_coef)  # (N, R)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=reduce)
    advantages, returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.lam)  # (N, R), (N, R)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask, reduce=reduce)
    return advantages, returns, -kl_coef * seq_sum(kl, mask)


def grpo_group_advantages(exp: Experience, cfg: OnlineConfig, kl_coef: float):
    """Â_i = (s_i - mean_g) / std (std of the group, of the batch over all ranks, or 1: scale_rewards); the KL is in
    the loss, so the non-score part is only reported."""
    non_score = -kl_coef * seq_sum(reference_kl(exp, "k3"), exp.response_mask)  # (N,)
    advantages = grpo_advantages(exp.scores, cfg.group_size, scale=cfg.scale_rewards, reduce=distributed.reducer())
    return _whiten_rows(advantages, cfg.whiten_advantages), None, non_score


def rloo_group_advantages(exp: Experience, cfg: OnlineConfig, kl_coef: float):
    """Â_i = r_i - mean_{j≠i} r_j with r = score - β Σ_t kl_t (Ahmadian et al. 2024)."""
    kl = seq_sum(reference_kl(exp, cfg.kl_estimator), exp.response_mask)  # (N,)
    advantages = rloo_advantages(exp.scores - kl_coef * kl, cfg.group_size)  # (N,)
    return _whiten_rows(advantages, cfg.whiten_advantages), None, -kl_coef * kl


def ppo_losses(out: PolicyOutput, mb: Experience, cfg: OnlineConfig, kl_coef: float, denom):
    pg, stats = ppo_policy_loss(out.logprobs, mb.logprobs, mb.advantages, mb.response_mask, cfg.cliprange,
                                "token", denom, cfg.epsilon_high)
    vf, vf_stats = ppo_value_loss(out.values, mb.values, mb.returns, mb.response_mask, cfg.cliprange_value,
                                  "token", denom)
    return pg + cfg.vf_coef * vf, {"policy_loss": pg.detach(), "value_loss": vf.detach(), **stats, **vf_stats}


def grpo_losses(out: PolicyOutput, mb: Experience, cfg: OnlineConfig, kl_coef: float, denom):
    loss, stats = grpo_loss(out.logprobs, mb.logprobs, mb.ref_logprobs, mb.advantages, mb.response_mask,
                            cfg.cliprange, kl_coef, GRPO_LOSS_TYPES[cfg.loss_type], denom, cfg.epsilon_high)
    if "kl" in stats:  # absent without a reference (kl_coef 0)
        stats["loss_kl"] = stats.pop("kl")  # mean per-token k3 of the current policy, the loss's KL term
    return loss, {"policy_loss": loss.detach(), **stats}


def rloo_losses(out: PolicyOutput, mb: Experience, cfg: OnlineConfig, kl_coef: float, denom):
    if cfg.importance_ratio == "sequence":
        loss, stats = sequence_ratio_loss(out.logprobs, mb.logprobs, mb.advantages, mb.response_mask, cfg.cliprange,
                                          denom, cfg.epsilon_high)
    else:
        loss, stats = ppo_policy_loss(out.logprobs, mb.logprobs, mb.advantages, mb.response_mask, cfg.cliprange,
                                      "token", denom, cfg.epsilon_high)
    return loss, {"policy_loss": loss.detach(), **stats}


# What each micro-batch's summed loss is divided by, per GRPO loss_type (TRL's names), as (cfg, tokens of the whole
# minibatch over all ranks, the micro-batch's rows, micro-batches on this rank) -> denom. Tether's optimizer batch is
# the minibatch (minibatch_size rows over all ranks), TRL's is per_device_batch x accumulation x processes; every
# denominator but bnpo's counts the whole minibatch, so the update does not depend on micro_batch_size or the ranks
# (distributed.rank_count: DDP averages the ranks' gradients). bnpo normalises each micro-batch by its own tokens
# and averages the micro-batches (and DDP the ranks), as TRL's per-device batch under accumulation: it does depend on
# micro_batch_size and on how the minibatch's rows fall on the ranks.
LOSS_DENOMINATORS = {
    "grpo": lambda cfg, tokens, micro, n_micro: distributed.rank_count(cfg.minibatch_size),
    "bnpo": lambda cfg, tokens, micro, n_micro: micro.response_mask.sum().clamp(min=1) * n_micro,
    "dr_grpo": lambda cfg, tokens, micro, n_micro: distributed.rank_count(cfg.minibatch_size * cfg.max_new_tokens),
    "dapo": lambda cfg, tokens, micro, n_micro: distributed.rank_count(tokens),
}


@dataclass(frozen=True)
class Algorithm:
    advantages: Callable
    """(exp, cfg, kl_coef) -> (advantages (N, R) or (N,), returns (N, R) or None, non_score_reward (N,))."""
    loss: Callable
    """(out, minibatch rows, cfg, kl_coef, denom) -> (loss, stats); loss parts named *_loss, the rest token means."""
    normaliser: Callable[[OnlineConfig], str]
    """cfg -> the GRPO loss_type whose normalisation the policy loss (and the entropy bonus) use: its aggregation
    (policy_losses.GRPO_LOSS_TYPES) and what `denom` counts (LOSS_DENOMINATORS)."""
    critic: bool
    """Needs a value model."""


ALGORITHMS = {
    "ppo": Algorithm(ppo_advantages, ppo_losses, lambda cfg: "dapo", critic=True),
    "grpo": Algorithm(grpo_group_advantages, grpo_losses, lambda cfg: cfg.loss_type, critic=False),
    "rloo": Algorithm(rloo_group_advantages, rloo_losses,
                      lambda cfg: "grpo" if cfg.importance_ratio == "sequence" else "dapo", critic=False),
}
"""The online algorithms (`config.ALGORITHM_NAMES`):
- ppo (Ziegler et al. 2019; Stiennon et al. 2020; the details of Huang et al. 2024, arXiv:2403.17031): the reward is
  the score at the response's last token minus β·KL(π || π_ref) at every token (`kl_estimator`, k1 by default),
  advantages by GAE against a learned value function, clipped policy and value losses.
- grpo (Shao et al. 2024, DeepSeekMath): `group_size` samples per prompt, advantages = scores centred within the
  group and scaled (`scale_rewards`), no critic; the KL (k3) sits in the loss with weight β; `loss_type` picks how
  the per-token losses add up (grpo, bnpo, dr_grpo, dapo).
- rloo (Ahmadian et al. 2024): `group_size` samples per prompt, reward = score - β·(sequence KL), advantage = reward
  minus the mean reward of the other samples of its group, no critic; one importance ratio per response by default
  (`ratio`). Each of the three clips the ratio to [1 - cliprange, 1 + epsilon_high].
(The names of the token-mean normaliser: ppo and rloo's token ratio are "dapo", rloo's sequence ratio "grpo".)
"""
SUMMED = ("policy_loss", "value_loss")  # already divided by the minibatch's denom: micro-batch parts add up


class Actor(nn.Module):
    """The policy and its critic (or None) as one module, so that one DDP wrapper all-reduces both's gradients."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, rows: Experience, temperature: float) -> PolicyOutput:
        return policy_forward(self.policy, self.critic, rows, temperature)


def update(policy, critic, optimizer, exp: Experience, cfg: OnlineConfig, kl_coef: float, lr: float,
           generator: torch.Generator, guard: NonFiniteGuard | None = None, net: nn.Module | None = None
           ) -> dict[str, float]:
    """ppo_epochs passes over shuffled minibatches, each one optimizer step accumulated over micro-batches.

    Every micro-batch loss is divided by the whole minibatch's count (`denom`), so loss, gradients and the
    token-weighted stats do not depend on micro_batch_size. Returns stats averaged over the optimizer steps, and
    nonfinite_skips: the optimizer steps `guard` (the run's, else a fresh one from cfg) dropped for a NaN or inf.

    Under torchrun `exp` holds this rank's rows of the global batch and `net` is the DDP wrapper of
    Actor(policy, critic): every rank draws the same permutation of the global batch and trains on its rows of each
    minibatch (`distributed.local_rows`), so the update is the one a single process would make.
    """
    guard = guard or NonFiniteGuard.from_config(cfg)
    algo = ALGORITHMS[cfg.algorithm]
    net = net or Actor(policy, critic if algo.critic else None)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums, n_steps, skipped, grad_norms = defaultdict(float), 0, 0, 0.0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(cfg.batch_size, generator=generator, device=generator.device)  # (N,)
        for start in range(0, cfg.batch_size, cfg.minibatch_size):
            rows = distributed.local_rows(order[start:start + cfg.minibatch_size].to(exp.scores.device),
                                          exp.scores.size(0))
            loss = minibatch_backward(net, exp, exp.select(rows), algo, cfg, kl_coef, sums)
            grad_norm, dropped = guard.apply(optimizer, params, cfg.grad_clip, lr, loss)
            grad_norms += grad_norm
            n_steps, skipped = n_steps + 1, skipped + dropped
    sums = distributed.all_reduce_sum(dict(sums))
    return {**{name: value / n_steps for name, value in sums.items()}, "grad_norm": grad_norms / n_steps,
            "nonfinite_skips": skipped}


def minibatch_backward(net: nn.Module, exp: Experience, mb: Experience, algo: Algorithm, cfg: OnlineConfig,
                       kl_coef: float, sums: dict[str, float]) -> float:
    """Forward and backward of one minibatch, `mb` being this rank's rows of it, micro_batch_size rows at a time;
    adds its stats to `sums` and returns its loss over all ranks (every rank then skips or steps alike).

    `denom` is the minibatch's count over all ranks, per rank (`distributed.rank_count`, as the other stages'
    `normalised`). A rank holding no rows runs one weight-0 micro-batch (`distributed.with_stand_in`)."""
    world = distributed.world_size()
    tokens = distributed.reduce_sum(mb.response_mask.sum())
    normaliser = algo.normaliser(cfg)
    aggregate, denominator = LOSS_AGGREGATIONS[GRPO_LOSS_TYPES[normaliser]], LOSS_DENOMINATORS[normaliser]
    micros = distributed.with_stand_in([mb.select(slice(i, i + cfg.micro_batch_size))
                                        for i in range(0, mb.scores.size(0), cfg.micro_batch_size)],
                                       exp.select(slice(0, 1)))
    mb_loss = 0.0
    for j, (micro, real) in enumerate(micros):
        weight = float(real)
        denom = denominator(cfg, tokens, micro, len(micros))
        with distributed.accumulating(net, last=j == len(micros) - 1):
            out = net(micro, cfg.temperature)
            loss, stats = algo.loss(out, micro, cfg, kl_coef, denom)
            entropy = token_entropy(out.logits if cfg.entropy_coef else out.logits.detach())  # (B, R)
            loss = loss - cfg.entropy_coef * aggregate(entropy, micro.response_mask, denom)
            (loss if real else loss * 0.0).backward()
        share = weight * float(micro.response_mask.sum() / tokens)
        stats["entropy"] = masked_mean(entropy.detach(), micro.response_mask)
        for name, value in stats.items():
            sums[name] += float(value) * (weight / world if name in SUMMED else share)
        sums["loss"] += weight * float(loss.detach()) / world
        mb_loss += weight * float(loss.detach()) / world
    return distributed.all_reduce_sum({"loss": mb_loss})["loss"]

"""Direct preference optimisation and its family, as pure torch functions of sequence log-probs.

Every pair loss reads summed log-probs of the chosen and rejected responses (prompt tokens excluded):

    policy_chosen = log π_θ(y_c | x),  policy_rejected = log π_θ(y_r | x),   shapes (N,)
    ref_chosen    = log π_ref(y_c | x), ref_rejected    = log π_ref(y_r | x), shapes (N,)

and returns per-pair losses (N,); the caller takes the mean (or divides the sum by the pairs of a whole
optimizer step, for exact gradient accumulation). The implicit margin of DPO is

    h = (log π_θ(y_c|x) - log π_ref(y_c|x)) - (log π_θ(y_r|x) - log π_ref(y_r|x))

Every entry of `DPO_LOSSES` takes the four log-probs and, as keyword-only arguments, the settings it reads
out of beta=β, label_smoothing=ε, gamma=γ, chosen_len=|y_c|, rejected_len=|y_r|, tie=mask. A stage passes
exactly `loss_keywords(fn)`, so it never branches on the loss, and a misspelt keyword is a TypeError.

Ties. The Bradley-Terry family (sigmoid, cdpo, robust, simpo) models P(y_c ≻ y_r) and has no place for a
tie: the DPO stage drops tie rows and reports how many. IPO regresses h onto a target, and a tie has the
natural target 0 (equal log-ratios), so `ipo` takes a `tie` mask and keeps ties (`TIE_AWARE`).

KTO (Ethayarajh et al. 2024) learns from unpaired thumbs-up/down rows, a different data shape and call:
`kto` (with its reference point `kto_reference_point`), in `UNPAIRED_LOSSES`, trained by `tether dpo
loss=kto` (`tether.stages.dpo.unpaired`). Converted from comparisons, a tie has no label (neither response is good or
bad): the KTO path drops and counts ties too. Ties kept: ipo only.
"""
from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from tether.math.losses import IGNORE_INDEX


def _float(*xs: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in a common dtype of at least float32 (bf16 log-probs lose the margin's low bits)."""
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.dtype)
    return [x.to(dtype) for x in xs]


def implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """h = (π_c - ref_c) - (π_r - ref_r), the log-ratio difference of DPO (Rafailov et al. 2023, eq. 7).

    Swapping chosen and rejected negates h. Shapes (N,) x 4 -> (N,).
    """
    pc, pr, rc, rr = _float(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (pc - rc) - (pr - rr)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float,
                     length: torch.Tensor | None = None) -> torch.Tensor:
    """r(x, y) = β (log π_θ(y|x) - log π_ref(y|x)), DPO's implicit reward (Rafailov et al. 2023, eq. 5,
    without the prompt-only term β log Z(x), which cancels in every pair comparison).

    With `length` = |y|: β (log π_θ - log π_ref) / |y|, the reward of length-normalised losses (SimPO,
    Meng et al. 2024 eq. 4, with ref = 0; TRL's IPO). Shapes (N,), (N,), (N,) or None -> (N,).
    """
    policy_logps, ref_logps = _float(policy_logps, ref_logps)
    r = beta * (policy_logps - ref_logps)
    return r if length is None else r / length.to(r.dtype)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's counted tokens, and their count.

        logp[b] = Σ_{t: labels[b,t] != -100} log softmax(logits[b, t])[labels[b, t]]

    `labels` are next-token targets as `tether.math.losses.shift_labels` builds them. Computed in at least
    float32. Shapes: logits (B, T, V), labels (B, T) -> logp (B,), count (B,) int.
    """
    return token_logps(logits, labels).sum(-1), (labels != IGNORE_INDEX).sum(-1)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[b, t])[labels[b, t]] at counted positions, 0 elsewhere. (B, T, V), (B, T) -> (B, T)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    # cross_entropy gives exactly 0 at ignored positions (a gather would need the -100s replaced first).
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")  # (B, T)
    return -nll


# -- the pair losses ------------------------------------------------------------------------------------


def dpo_sigmoid(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):

        L = -log σ(β h),   h = (π_c - ref_c) - (π_r - ref_r)

    ln 2 at h = 0 (so at step 0, when the policy is the reference). Shapes (N,) x 4 -> (N,).
    """
    h = implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * h)


def ipo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float, chosen_len: torch.Tensor,
        rejected_len: torch.Tensor, tie: torch.Tensor | None = None) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", §5.1, the sampled IPO loss), with τ = β:

        L = (h̄ - 1/(2β))²,   h̄ = (π_c - ref_c)/|y_c| - (π_r - ref_r)/|y_r|
        L = h̄²              for a tie (tie[i] true): P(y_c ≻ y_r) = 1/2 makes the target 0

    Length-averaged log-probs, as TRL's IPO (`loss_type="ipo"` divides log-probs by the completion length):
    the target 1/(2β) is one number for every pair, and with sums a long pair would reach it with a much
    smaller per-token change than a short one. The paper's summed form is this with lengths of 1.
    Unlike the sigmoid losses, IPO stops pushing once h̄ reaches the target (no drive to ±∞).
    Tie target: the population loss E[(h̄ - I/β)²], I = 1{y_c ≻ y_r} with mean p, plus the same for the
    mirrored order (h̄ -> -h̄, I -> 1 - I), is minimised at h̄* = (p - 1/2)/β: 1/(2β) when decided, 0 for a tie.
    Shapes (N,) x 4, lengths (N,), tie (N,) bool or None -> (N,).
    """
    pc, pr, rc, rr, lc, lr = _float(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len,
                                    rejected_len)
    h = (pc - rc) / lc - (pr - rr) / lr
    target = torch.full_like(h, 1 / (2 * beta))
    if tie is not None:
        target = torch.where(tie, 0.0, target)
    return (h - target) ** 2


def cdpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
         label_smoothing: float) -> torch.Tensor:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO"):
    each label is taken as flipped with probability ε, so the target P(y_c ≻ y_r) is 1 - ε:

        L = (1 - ε) (-log σ(β h)) + ε (-log σ(-β h))

    Minimised at finite β h = log((1 - ε)/ε) instead of +∞; ε = 0 is `dpo_sigmoid`. Shapes (N,) x 4 -> (N,).
    """
    h = implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def robust_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
               label_smoothing: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", §3), for labels flipped at rate ε < 1/2, with L(h) = -log σ(β h):

        L_ε(h) = ((1 - ε) L(h) - ε L(-h)) / (1 - 2ε)

    Unbiased under the noise: (1 - ε) L_ε(h) + ε L_ε(-h) = L(h), the clean loss in expectation. Unlike cDPO
    it is not a cross-entropy: it can be negative and keeps pushing h up. Shapes (N,) x 4 -> (N,).
    """
    h = implicit_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def simpo(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta: float, gamma: float,
          chosen_len: torch.Tensor, rejected_len: torch.Tensor) -> torch.Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6):

        L = -log σ(β (π_c/|y_c| - π_r/|y_r|) - γ)

    Reference-free (ref_* are accepted for the common signature and ignored) and length-normalised; the
    margin γ asks the chosen response to win by γ/β nats per token. Per-token differences are small, so
    SimPO wants a β of a few units, far above DPO's 0.1. TRL's `simpo_gamma` is this γ.
    Shapes (N,) x 2, lengths (N,) -> (N,).
    """
    pc, pr, lc, lr = _float(policy_chosen, policy_rejected, chosen_len, rejected_len)
    return -F.logsigmoid(beta * (pc / lc - pr / lr) - gamma)


DPO_LOSSES = {"sigmoid": dpo_sigmoid, "ipo": ipo, "cdpo": cdpo, "robust": robust_dpo, "simpo": simpo}
"""name -> pair loss fn(pc, pr, rc, rr, **{the keywords of loss_keywords(fn)}) -> (N,)."""


@functools.cache
def loss_keywords(fn) -> tuple[str, ...]:
    """The keyword-only arguments of a loss: the settings it reads (a subset of beta, label_smoothing, gamma,
    chosen_len, rejected_len, tie for the pair losses)."""
    return tuple(name for name, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY)


REFERENCE_FREE = frozenset({"simpo"})
"""Losses that never read the reference log-probs (the stage skips the reference pass for them)."""
LENGTH_NORMALISED = frozenset({"ipo", "simpo"})
"""Losses acting on log-probs divided by response length; their implicit rewards are reported per token too."""
TIE_AWARE = frozenset({"ipo"})
"""Losses with a target for ties; for the others the stage drops tie rows."""


# -- KTO ----------------------------------------------------------------------------------------------


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z_ref = max(0, mean_i (log π_θ(y'_i|x_i) - log π_ref(y'_i|x_i))), detached.

    KTO's estimate of KL(π_θ || π_ref) (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
    Optimization", §4.1): y'_i is the response of *another* row paired with prompt x_i (a mismatched pair, so
    the estimate is not the rewards' own mean; `tether.data.unpaired.mismatched_partners` picks y'_i). The
    paper and TRL (`kto_loss`, whose KL pass runs under no_grad) do not backpropagate through it, and clamp
    it at 0 since a KL is >= 0. One z_ref per optimizer batch: computed per micro-batch, the loss would
    depend on how the batch is split. Shapes (M,), (M,) -> scalar.
    """
    policy_kl_logps, ref_kl_logps = _float(policy_kl_logps, ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, z_ref: torch.Tensor | float,
        *, beta: float, lambda_d: float = 1.0, lambda_u: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, §4.1, eq. 8: L = λ_y - v(x, y)) for unpaired rows (x, y, desirable?),
    with r = log π_θ(y|x) - log π_ref(y|x):

        desirable:    L = λ_D (1 - σ(β (r - z_ref)))
        undesirable:  L = λ_U (1 - σ(β (z_ref - r)))

    λ_D / 2 or λ_U / 2 at step 0 (policy = reference, so r = z_ref = 0). Bounded in [0, λ], so an
    example far past the reference point stops pulling (the value function saturates, unlike DPO's -log σ).

    z_ref from `kto_reference_point` (a constant here). The paper suggests λ_D n_D / (λ_U n_U) in [1, 4/3]
    when desirable and undesirable counts differ. A comparison gives one desirable and one undesirable row.
    Shapes: (N,), (N,), desirable (N,) bool, z_ref scalar -> (N,).
    """
    policy_logps, ref_logps = _float(policy_logps, ref_logps)
    r = policy_logps - ref_logps  # (N,)
    z = torch.as_tensor(z_ref, dtype=r.dtype, device=r.device)
    return torch.where(desirable, lambda_d * (1 - torch.sigmoid(beta * (r - z))),
                       lambda_u * (1 - torch.sigmoid(beta * (z - r))))


UNPAIRED_LOSSES = {"kto": kto}
"""name -> loss of unpaired rows, called as fn(policy_logps, ref_logps, desirable, z_ref, beta=, lambda_d=,
lambda_u=) -> (N,)."""

"""Losses as pure torch functions (no model, no I/O): each states its formula and tensor shapes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token targets for causal LM training.

    labels[b, t] = input_ids[b, t + 1] where loss_mask[b, t + 1] == 1, else IGNORE_INDEX; the last
    position has no next token. Shapes: input_ids, loss_mask (B, T) -> labels (B, T).
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(loss_mask[:, 1:].bool(), input_ids[:, 1:], IGNORE_INDEX)
    return labels


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood over counted tokens, and the count.

        nll = - sum_{b,t: labels[b,t] != -100} log softmax(logits[b, t])[labels[b, t]]

    Returning the *sum* (not the mean) lets a training step divide by the number of counted tokens
    in the whole optimizer batch, so that splitting it into micro-batches with gradient accumulation
    gives exactly the same loss and gradients (the classic accumulation bug is averaging per
    micro-batch). Shapes: logits (B, T, V), labels (B, T) -> (scalar, scalar int).
    """
    # At least fp32 (bf16 logits would lose precision in the sum), float64 kept for gradcheck.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (labels != IGNORE_INDEX).sum()


def bradley_terry_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    target: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley-Terry loss of a reward model, with soft targets, a margin and label smoothing.

    Bradley & Terry (1952) model a preference as P(A > B) = σ(r_a - r_b); the reward model is fit by the
    cross-entropy of that probability against the label (Ouyang et al. 2022, InstructGPT, eq. 1:
    loss = -log σ(r_chosen - r_rejected)). With d = r_a - r_b, target p = P(A preferred) (1 for A, 0 for
    B, 0.5 for a tie) and margin m >= 0:

        p'   = p (1 - ε) + (1 - p) ε                                   (label smoothing ε)
        loss = -( p' log σ(d - m) + (1 - p') log σ(-d - m) )

    Margin: Touvron et al. 2023 (Llama 2) §3.2.2 train with -log σ(r_chosen - r_rejected - m(r)), m
    growing with the rater's stated strength, so a "much better" pair must be separated by at least m.
    Here m enters both terms: whichever side the target favours must win by m, so the loss depends only
    on (d, p, m) through the chosen side and stays mirror-symmetric (swapping A and B with p -> 1 - p
    gives the same loss). For p = 1 it is exactly Llama 2's -log σ(d - m); for p = 0 it is -log σ(-d - m);
    for a tie (p = 0.5) with m > 0 the minimum is still at d = 0 but worth -log σ(-m) > ln 2, so callers
    give ties m = 0. m = 0 (or None) is the plain InstructGPT loss.

    Label smoothing ε (the conservative target of cDPO, Mitchell 2023): each label is taken as flipped
    with probability ε, so a hard label never pushes |d| to infinity; ε in [0, 0.5).

    Shapes: r_a, r_b, target (N,); margin (N,), a float, or None -> losses (N,), float32 or wider.
    Computed with logsigmoid, so it stays finite for rewards of any size.
    """
    dtype = torch.promote_types(torch.promote_types(r_a.dtype, r_b.dtype), torch.float32)
    d = r_a.to(dtype) - r_b.to(dtype)  # (N,)
    m = torch.zeros_like(d) if margin is None else torch.as_tensor(margin, dtype=dtype, device=d.device)
    p = target.to(dtype)  # (N,)
    p = p * (1 - label_smoothing) + (1 - p) * label_smoothing
    return -(p * F.logsigmoid(d - m) + (1 - p) * F.logsigmoid(-d - m))

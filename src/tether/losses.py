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

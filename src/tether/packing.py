"""Padding-free batches: a micro-batch's conversations laid end to end in a few rows, each conversation attending
only to itself.

A packed row holds several conversations one after another. Their position ids restart at 0 at each
conversation's first token, and no attention mask is passed: transformers then reads the packing from the position
ids (`masking_utils.find_packed_sequence_indices`: a position that does not follow its left neighbour by 1 starts
a new sequence) and builds a block-diagonal causal mask (sdpa, eager; sliding windows counted in per-conversation
positions), so every token sees exactly the tokens it would see alone. The labels are each conversation's own
`shift_labels`, whose last position predicts nothing: no conversation's first token is predicted from the one
before it. Rows shorter than the longest end in pad tokens, each at position 0, so each is a one-token sequence
of its own that no real token attends to. The loss sums and counts are those of the padded batch, so the step's
per-token mean is unchanged (tests/test_packing.py: equal losses and gradients on the real architectures).

TRL calls this `padding_free` (one row per batch, `DataCollatorWithFlattening`); `pack_tokens` also allows a few
shorter rows: on the CPU, sdpa runs a packed row's whole T x T block-diagonal mask, so attention costs grow with the
square of the row's length.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from tether.errors import ConfigError
from tether.math.losses import IGNORE_INDEX, shift_labels
from tether.training import Example

PACKABLE = frozenset({"llama", "gpt2", "qwen2", "gemma2", "gemma3_text", "phi3", "gpt_neox", "mistral"})
"""Model types whose decoder passes position ids to transformers' mask builder, so a packed row's conversations stay
apart (tests/test_packing.py checks each against conversations run alone). OPT does not: its mask is plain causal."""
MASKED_ATTENTION = frozenset({"sdpa", "eager"})
"""Attention implementations that take the block-diagonal mask built from the position ids (tested on the CPU)."""


def check_packable(model) -> None:
    """Raise ConfigError unless `model` keeps packed conversations apart (`PACKABLE`, `MASKED_ATTENTION`)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in PACKABLE:
        raise ConfigError(f"padding_free: model type {kind} would let packed conversations attend to each other "
                          f"(verified: {', '.join(sorted(PACKABLE))}); use padding_free=false")
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in MASKED_ATTENTION:
        raise ConfigError(f"padding_free: attention implementation {attention} is not verified to keep packed "
                          f"conversations apart (verified: {', '.join(sorted(MASKED_ATTENTION))}); use "
                          "padding_free=false")


def pack_rows(lengths: list[int], row_tokens: int = 0) -> list[list[int]]:
    """Indices of the sequences of each packed row. row_tokens 0: one row of them all, in order; else first-fit
    decreasing (longest first, each into the first row with room) into rows of max(row_tokens, longest) tokens."""
    if row_tokens <= 0:
        return [list(range(len(lengths)))]
    cap = max([row_tokens, *lengths])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep their order
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(cap)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


def collate_packed(examples: list[Example], pad_id: int, row_tokens: int = 0) -> dict[str, torch.Tensor]:
    """A padding-free micro-batch: input_ids, position_ids and labels (R, W) of `pack_rows`, no attention mask (its
    absence is what makes transformers read the packing from the position ids)."""
    rows = pack_rows([len(e.input_ids) for e in examples], row_tokens)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, W)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (R, W); 0 on padding: one-token sequences
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (R, W)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            seq = torch.tensor(examples[i].input_ids)[None]  # (1, n)
            n = seq.size(1)
            ids[r, at:at + n] = seq[0]
            positions[r, at:at + n] = torch.arange(n)
            labels[r, at:at + n] = shift_labels(seq, torch.tensor(examples[i].loss_mask)[None])[0]
            at += n
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def packed_collate(row_tokens: int = 0) -> Callable[[list[Example], int], dict[str, torch.Tensor]]:
    """`collate_packed` with `row_tokens` fixed: the `collate` a training loop calls as collate(examples, pad_id)."""
    return partial(collate_packed, row_tokens=row_tokens)

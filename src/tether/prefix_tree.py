"""Shared prefixes in one pass without a cache: a prefix and every tail that continues it laid in one row, under a
custom attention mask.

Sequences that start alike (a preference pair's chosen and rejected after one prompt) need their common prefix run
once. A row holds [prefix, tail_1, ..., tail_k]: each tail's tokens attend to the prefix and to their own tail's
earlier tokens, never to another tail, at positions continuing the prefix's (len(prefix) + t). So every token sees
exactly the keys and values it would see in its whole sequence run alone, and every output is unchanged (the layout
of Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix Sharing").

Running tails after the prefix's cached keys and values (`logprobs.shared_prompt_logps`, `RewardModel.forward`'s
`after`) saves the same tokens, but a pass with a cache cannot run compiled decoder layers (`distributed.
compile_layers`); this layout is one plain forward. It costs more attention (each row is T x T, against the prefix's
P x P and each tail's t x (P + t)), which at these sizes is a small part of a layer, and a larger mask: R x W x W for
R rows of W tokens, where a row is about two sequences long, so about twice the mask transformers builds for the
same sequences padded (2R sequences of about W/2 tokens: R x W x W / 2).

The mask is transformers' custom 4D mask (R, 1, W, W), which its mask builders return as they are: boolean for sdpa
(True: attend), additive for eager attention (0, or the dtype's minimum). Padding attends to itself only, so no
softmax row is empty (an all-masked row is NaN under sdpa).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MASKS = frozenset({"sdpa", "eager"})
"""Attention implementations that take a custom 4D mask as it is (flash attention takes none)."""


@dataclass
class TreeRows:
    """Prefix groups laid out one per row, right-padded to the longest row."""

    input_ids: torch.Tensor
    """(R, W) token ids: a prefix, then its tails, then padding."""
    position_ids: torch.Tensor
    """(R, W) each token's position in its own sequence (a tail's continue its prefix's); 0 on padding."""
    segments: torch.Tensor
    """(R, W) 0 on a prefix, i on its row's i-th tail (from 1), -1 on padding."""
    spans: list[tuple[int, int, int]]
    """Per tail, in the order the groups list them: (row, first column, length)."""


def tree_rows(groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], pad_id: int, device=None) -> TreeRows:
    """One row per (prefix, tails) group, in the given order, right-padded with `pad_id`."""
    width = max(len(prefix) + sum(len(t) for t in tails) for prefix, tails in groups)
    shape = (len(groups), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    spans = []
    for row, (prefix, tails) in enumerate(groups):
        p = len(prefix)
        ids[row, :p], positions[row, :p], segments[row, :p] = torch.tensor(prefix, dtype=torch.long), \
            torch.arange(p), 0
        at = p
        for i, tail in enumerate(tails, start=1):
            n = len(tail)
            ids[row, at:at + n] = torch.tensor(tail, dtype=torch.long)
            positions[row, at:at + n] = torch.arange(p, p + n)
            segments[row, at:at + n] = i
            spans.append((row, at, n))
            at += n
    return TreeRows(ids.to(device), positions.to(device), segments.to(device), spans)


def rows_by_prefix(sequences: Sequence[Sequence[int]], prefixes: Sequence[Sequence[int]], pad_id: int,
                    chunk_ends: Callable[[list[int]], list[int]], device=None) -> list[tuple[list[int], TreeRows]]:
    """The sequences grouped by their prefix (prefixes[i] starts sequences[i]), one row per distinct prefix holding
    the tails of its sequences, rows sorted by width and cut where `chunk_ends` (ascending widths -> chunk ends)
    says; per chunk, the indices of its sequences in the order of its rows' spans, and the rows."""
    members: dict[tuple, list[int]] = {}
    for i, prefix in enumerate(prefixes):
        members.setdefault(tuple(prefix), []).append(i)
    width = {p: len(p) + sum(len(sequences[i]) - len(p) for i in idx) for p, idx in members.items()}
    groups = sorted(members.items(), key=lambda g: (width[g[0]], g[0]))
    chunks, begin = [], 0
    for end in chunk_ends([width[p] for p, _ in groups]):
        part = groups[begin:end]
        rows = tree_rows([(p, [sequences[i][len(p):] for i in idx]) for p, idx in part], pad_id, device)
        chunks.append(([i for _, idx in part for i in idx], rows))
        begin = end
    return chunks


def tree_mask(segments: torch.Tensor, attention: str = "sdpa", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (R, 1, W, W) mask of rows whose `segments` (R, W) `tree_rows` gave: query q may attend to key k <= q when
    k is in the prefix or in q's own tail; padding to itself. Boolean for sdpa, additive in `dtype` for eager."""
    width = segments.size(1)
    query, key = segments[:, :, None], segments[:, None, :]  # (R, W, 1), (R, 1, W)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()  # (W, W)
    allowed = causal & (query >= 0) & ((key == 0) | (key == query))  # (R, W, W)
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device) & (query < 0)
    allowed = allowed[:, None]  # (R, 1, W, W)
    if attention == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)

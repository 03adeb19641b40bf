"""Reward-model batches: each distinct sequence once, cut into length chunks, prompts shared as a prefix.

A step's pairs come in whole prompt groups. Three savings, each leaving every reward unchanged:
1. distinct sequences: a (prompt, response) in several pairs (K-choose-2 pairs of K responses, several raters of
   one pair) is scored once (InstructGPT, Ouyang et al. 2022 §3.5);
2. length chunks: sorted by length and cut where padding would cost more than one more forward pass
   (`length_chunks`);
3. shared prompt prefixes (causal backbones): the tokens every sequence of a prompt group starts with are run once,
   and each sequence runs only its own tail (holding the token the reward is read at): the prefix and its tails in
   one row, each tail attending to the prefix and itself (`collate_rows`, `tether.prefix_tree`; sdpa and eager
   attention), else the tails after the prefix's cached keys and values. A pair's two sequences repeat the prompt;
   on the world's comparisons the prompt is about a fifth of the tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tether.prefix_tree import rows_by_prefix
from tether.reward import RewardModel, collate


@dataclass
class Pair:
    """One labelled comparison, encoded for the reward model."""

    prompt_key: str
    """The prompt as canonical JSON: comparisons with the same key form one prompt group."""
    ids_a: list[int]
    """Token ids of (prompt, response A) as `encode_pair` gives them, length <= max_length."""
    ids_b: list[int]
    """Token ids of (prompt, response B)."""
    target: float
    """P(A preferred): 1.0 for "A", 0.0 for "B", 0.5 for "tie"."""
    margin: float
    """Bradley-Terry margin m >= 0 (0 unless `margin` is on and the rater gave a strength)."""
    length_a: int
    """Tokens of response A alone (for the reward-length correlation)."""
    length_b: int
    """Tokens of response B alone."""
    rater: str | None = None
    """Who labelled it (the comparison's `rater`; None when unknown): the unit of ensemble_unit=rater."""


CHUNK_OVERHEAD_TOKENS = 32
"""What one more forward/backward pass costs, in padded tokens, when a batch's sequences are cut into length chunks
or a prompt prefix gets its own pass; padding costs its tokens. Measured (benchmarks/rm_pass_cost.py, CPU, fp32, one
thread): 24-29 tokens at 5M parameters, 19-33 at 34M. Each pass's backward writes a full weight gradient per layer
and adds it into .grad, work in proportion to the parameters as the per-token FLOPs are, so the figure barely moves
with model size. On the tiny world's unique pairs, 16 to 64 here give the same step time within 2% (5M and 34M)."""


@dataclass
class PairBatch:
    """Pairs of whole prompt groups, each distinct sequence once, sorted by length and cut into chunks each padded
    to its own longest (a pair's two responses often differ in length: one padded tensor would pad ~40%). U
    sequences, P pairs; chunk c holds U_c sequences of T_c tokens. With `prefix`, the chunks hold each sequence's
    tail after its prompt group's shared prefix (G prefixes, in length chunks of their own), and `prefix_rows[c]`
    says which (rows of the prefix chunks concatenated)."""

    chunks: list[tuple[torch.Tensor, torch.Tensor]]
    """(input_ids (U_c, T_c) right-padded, attention_mask (U_c, T_c)) per chunk; rows in ascending length."""
    index_a: torch.Tensor
    """(P,) row of each pair's response A among the U sequences (chunks concatenated)."""
    index_b: torch.Tensor
    """(P,) row of each pair's response B."""
    target: torch.Tensor
    """(P,) P(A preferred)."""
    margin: torch.Tensor
    """(P,) margins."""
    prefixes: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """(input_ids (G_k, T_k), attention_mask (G_k, T_k)) per chunk of shared prefixes, right-padded, in ascending
    length; empty: the chunks hold whole sequences."""
    prefix_rows: list[torch.Tensor] = field(default_factory=list)
    """Per chunk, (U_c,) the prefix row each of its tails continues."""
    rows: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    """With prefixes laid out in rows (`collate_rows`), per length chunk of rows: (input_ids (R_c, W_c), position_ids
    (R_c, W_c), segments (R_c, W_c), read (U_c, 2)), `prefix_tree.tree_rows`'s, read the (row, column) each
    sequence's reward is read at; `chunks` and `prefixes` are then empty."""


def length_chunks(lengths: list[int], overhead: int = CHUNK_OVERHEAD_TOKENS) -> list[int]:
    """Where to cut ascending `lengths` into chunks, each padded to its last (longest) length, minimising padded
    tokens + `overhead` per chunk (dynamic programming over the cut points, O(n²)). Returns the chunk ends."""
    n = len(lengths)
    cost, start = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = cost[i] + (j - i) * lengths[j - 1] + overhead
            if c < cost[j]:
                cost[j], start[j] = c, i
    ends, j = [], n
    while j > 0:
        ends.append(j)
        j = start[j]
    return ends[::-1]


def shared_prefixes(pairs: list[Pair], pad_id: int | None = None) -> dict[tuple, tuple]:
    """Distinct sequence -> the prefix it shares with the other sequences of its prompt group: their longest common
    prefix, cut so that every sequence keeps in its tail at least one token of its own and its last token that is
    not `pad_id`, where the classifier reads the reward (when eos pads, a sequence ending in eos is read before it).
    A sequence alone in its group: all but its last token (its last non-pad token); sequences with no common start:
    each its own first token."""
    groups: dict[str, set[tuple]] = {}
    for p in pairs:
        groups.setdefault(p.prompt_key, set()).update((tuple(p.ids_a), tuple(p.ids_b)))
    read_at = {s: max((i for i, t in enumerate(s) if t != pad_id), default=0) for g in groups.values() for s in g}
    if any(i < 1 for i in read_at.values()):
        return {}  # a sequence read at its first token has no tail to run after a prefix
    prefix_of = {}
    for sequences in groups.values():
        first, n = next(iter(sequences)), min(read_at[s] for s in sequences)
        common = next((i for i in range(n) if any(s[i] != first[i] for s in sequences)), n)
        for s in sequences:
            prefix_of.setdefault(s, s[:max(common, 1)])
    return prefix_of


def prefix_saving(prefix_of: dict[tuple, tuple], overhead: int = CHUNK_OVERHEAD_TOKENS) -> int:
    """Token slots the shared prefixes save: each sequence's prefix tokens, less the prefix passes (the G prefixes
    in their length chunks, each padded to its longest, and each pass's cost)."""
    lengths = sorted(len(p) for p in set(prefix_of.values()))
    cost, begin = 0, 0
    for end in length_chunks(lengths, overhead):
        cost, begin = cost + (end - begin) * lengths[end - 1] + overhead, end
    return sum(len(p) for p in prefix_of.values()) - cost


def collate_pairs(pairs: list[Pair], pad_id: int, device=None, chunked: bool = True,
                  share_prefixes: bool = False, rows: bool = False) -> PairBatch:
    """Deduplicate the pairs' sequences (the K-choose-2 trick), sort them by length and pad them in chunks (one
    chunk with chunked=False: FSDP2 gathers the weights at every forward, a collective every rank must make
    equally often, while each rank's micro-batches cut into their own number of chunks). With share_prefixes
    (a model whose `shares_prefixes`), each prompt group's common prefix is run once when that saves tokens: in
    rows of a prefix and its tails with `rows` (a model whose `tree_shares`), else its tails after its cache."""
    prefix_of = shared_prefixes(pairs, pad_id) if share_prefixes and chunked else {}
    if prefix_of and prefix_saving(prefix_of) <= 0:
        prefix_of = {}
    if prefix_of and rows:
        return collate_rows(pairs, prefix_of, pad_id, device)
    tail = (lambda s: s[len(prefix_of[s]):]) if prefix_of else (lambda s: s)  # noqa: E731
    distinct = sorted({tuple(ids) for p in pairs for ids in (p.ids_a, p.ids_b)}, key=lambda s: (len(tail(s)), s))
    row_of = {ids: i for i, ids in enumerate(distinct)}
    prefixes = sorted(set(prefix_of.values()), key=lambda s: (len(s), s))
    prefix_row = {ids: i for i, ids in enumerate(prefixes)}
    chunks, prefix_rows, begin = [], [], 0
    for end in length_chunks([len(tail(s)) for s in distinct]) if chunked else [len(distinct)]:
        padded = collate([tail(s) for s in distinct[begin:end]], pad_id, device)
        chunks.append((padded["input_ids"], padded["attention_mask"]))
        if prefix_of:
            prefix_rows.append(torch.tensor([prefix_row[prefix_of[s]] for s in distinct[begin:end]], device=device))
        begin = end
    prefix_chunks, begin = [], 0
    for end in length_chunks([len(p) for p in prefixes]):
        padded = collate(prefixes[begin:end], pad_id, device)
        prefix_chunks.append((padded["input_ids"], padded["attention_mask"]))
        begin = end
    as_tensor = lambda xs, dtype: torch.tensor(xs, dtype=dtype, device=device)  # noqa: E731
    return PairBatch(chunks, as_tensor([row_of[tuple(p.ids_a)] for p in pairs], torch.long),
                     as_tensor([row_of[tuple(p.ids_b)] for p in pairs], torch.long),
                     as_tensor([p.target for p in pairs], torch.float32),
                     as_tensor([p.margin for p in pairs], torch.float32), prefix_chunks, prefix_rows)


def collate_rows(pairs: list[Pair], prefix_of: dict[tuple, tuple], pad_id: int, device=None) -> PairBatch:
    """`collate_pairs` with each prefix and the tails of its distinct sequences in one row (`prefix_tree`), rows
    sorted by width and cut into length chunks; the sequences numbered in the order the rows hold them."""
    distinct = sorted(prefix_of)
    chunks, order = [], []
    for idx, laid in rows_by_prefix(distinct, [prefix_of[s] for s in distinct], pad_id, length_chunks, device):
        sequences = [distinct[i] for i in idx]
        read = [(row, at + max(i for i, t in enumerate(s) if t != pad_id) - (len(s) - n))
                for s, (row, at, n) in zip(sequences, laid.spans)]  # the last non-pad token, as the classifier
        chunks.append((laid.input_ids, laid.position_ids, laid.segments, torch.tensor(read, device=device)))
        order += sequences
    row_of = {ids: i for i, ids in enumerate(order)}
    as_tensor = lambda xs, dtype: torch.tensor(xs, dtype=dtype, device=device)  # noqa: E731
    return PairBatch([], as_tensor([row_of[tuple(p.ids_a)] for p in pairs], torch.long),
                     as_tensor([row_of[tuple(p.ids_b)] for p in pairs], torch.long),
                     as_tensor([p.target for p in pairs], torch.float32),
                     as_tensor([p.margin for p in pairs], torch.float32), rows=chunks)


def pair_rewards(model: RewardModel, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_a (P,), r_b (P,), r (U,)): raw rewards of each pair's responses and of the distinct sequences. A
    sequence's reward does not depend on the other rows of its forward pass, so the chunks change no value; a tail
    after its prefix (in its row, or after its cache) gets the reward of the whole sequence (`RewardModel.forward`)."""
    if batch.rows:  # each prefix and its tails in one row
        r = torch.cat([model(ids, None, rows=(positions, segments, read))
                       for ids, positions, segments, read in batch.rows])  # (U,)
    elif not batch.prefixes:
        r = torch.cat([model(ids, mask) for ids, mask in batch.chunks])  # (U,)
    else:  # the prefixes' keys and values, once for every chunk of tails
        kv, prefix_mask = joined_caches([model(ids, mask, prefix_cache=True) for ids, mask in batch.prefixes],
                                        [mask for _, mask in batch.prefixes])
        r = torch.cat([model(ids, mask, after=(kv, prefix_mask, rows))
                       for (ids, mask), rows in zip(batch.chunks, batch.prefix_rows)])
    return r[batch.index_a], r[batch.index_b], r


def joined_caches(caches: list, masks: list[torch.Tensor]) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor]:
    """The key/value caches of the prefix chunks as one: per layer (keys, values) of (G, heads, T_p, d), each
    chunk right-padded to the longest T_p (the padding masked), and the mask (G, T_p)."""
    width = max(m.size(1) for m in masks)
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.size(2)))  # noqa: E731  (B, h, T, d): pad T
    layers = [(torch.cat([pad(c.layers[i].keys) for c in caches]),
               torch.cat([pad(c.layers[i].values) for c in caches])) for i in range(len(caches[0].layers))]
    return layers, torch.cat([torch.nn.functional.pad(m, (0, width - m.size(1))) for m in masks])

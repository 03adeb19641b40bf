"""Summed response log-probs of a causal LM, skipping the work no counted token needs.

The plain path runs the model on right-padded (B, T) sequences and takes log softmax over the full (B, T, V)
logits. Two shortcuts give the same log-probs (and gradients) with less work:

1. response-only LM head (`FastPaths.response_only`): the model's own forward runs with `logits_to_keep=1`, its
   body's last hidden states (B, T, H) are caught by a forward hook, and the LM head and log-softmax run only at the
   N counted positions, `HEAD_CHUNK` rows at a time, so (B, T, V) is never built (TRL's chunked LM head does the
   same, as SFT's `logits_to_keep` does for the prompt block), and the last decoder layer's feed-forward block
   runs at those positions only too (`tether.last_layer`: nothing else reads its output elsewhere);
2. shared prompts (`FastPaths.share_prompts`): sequences that start with the same prompt (a pair's chosen and
   rejected, KTO rows of one prompt) run that prompt once (Wang et al. 2024, "Accelerating Direct Preference
   Optimization with Prefix Sharing"). Where the attention takes a custom mask (sdpa, eager), a prompt and its tails
   make one row, each tail attending to the prompt and itself at positions continuing the prompt's
   (`tree_prompt_logps`, `tether.prefix_tree`): one pass, which compiled layers run (eager, about as fast as the
   cached form: benchmarks/dpo_share_prompts.py). Elsewhere (flash attention) each tail
   runs after the prompt's cached keys and values (`shared_prompt_logps`, as the reward model's tails). Gradients
   flow into the prompt's single pass either way.

Both apply only where they are known to be exact (`head_parts`, `shares_prompts`) and fall back to the plain path
elsewhere (an unverified architecture, sliding-window attention, checkpointing, torch.distributed).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import DynamicCache

from tether import distributed
from tether.last_layer import last_columns, read_rows_only
from tether.math.dpo_losses import token_logps
from tether.math.losses import IGNORE_INDEX, shift_labels
from tether.models import accepts, cache_kwarg, is_checkpointing, output_cache
from tether.prefix_tree import MASKS, rows_by_prefix, tree_mask
from tether.reward import continued_positions
from tether.rm_batch import joined_caches, length_chunks

HEAD_CHUNK = 1024
"""Counted positions per LM-head chunk: bounds the (chunk, V) float32 logits alive at once in the forward."""
PASS_OVERHEAD_TOKENS = 32
"""What one more forward pass costs, in padded tokens (as `rm_batch.CHUNK_OVERHEAD_TOKENS`): a shared-prompt pass
must save more than this."""
VERIFIED = frozenset({"llama", "gpt2", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "opt", "gpt_neox",
                      "mistral"})
"""Model types whose causal-LM forward is `lm_head(body(...))`, softcapped by `final_logit_softcapping` when set
(tests/test_logprobs.py checks each against the plain path); others take the plain path."""


@dataclass(frozen=True)
class FastPaths:
    """Which exact shortcuts `response_logps` may take (both are tested equal to the plain path)."""

    response_only: bool = True
    """The LM head and log-softmax at counted positions only, in chunks."""
    share_prompts: bool = True
    """Each distinct prompt of a forward run once, its sequences' tails after it (in its row, or after its cache)."""
    tree: bool = True
    """With share_prompts, the prompt and its tails in one row under a custom mask (`prefix_tree`) where the
    attention takes one (`tree_shares`), rather than tails after a cache: one pass, which compiled layers run."""


PLAIN = FastPaths(response_only=False, share_prompts=False)


def causal_lm(model):
    """The Hugging Face causal LM inside `model`: through a DDP wrapper (`module`), LoRA's base view (`adapted`,
    tether.lora.AdaptersDisabled) and peft's wrapper (`get_base_model`)."""
    model = getattr(model, "module", model)
    model = getattr(model, "adapted", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_parts(model) -> tuple | None:
    """(body, lm_head, softcap) when `model`'s logits are `lm_head(body(...).last_hidden_state)` (softcapped when
    softcap is set), else None (the plain path)."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if config is None or config.model_type not in VERIFIED or dist.is_initialized():
        return None
    # the decoder the forward calls (OPT's forward calls model.decoder, not model)
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "base_model", None)
    head = lm.get_output_embeddings()
    if body is None or body is lm or head is None:
        return None
    return body, head, getattr(config, "final_logit_softcapping", None)


def shares_prompts(model) -> bool:
    """Whether a sequence's tail can run after its prompt's cached keys and values with unchanged results: a verified
    decoder taking position_ids, full attention in every layer, the cache on (checkpointing turns it off), one
    process (DDP expects one forward per backward)."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    return (config is not None and config.model_type in VERIFIED and not dist.is_initialized()
            and accepts(lm, "position_ids") and getattr(config, "sliding_window", None) is None
            and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
            and not is_checkpointing(lm))


def tree_shares(model) -> bool:
    """Whether the prompt-and-tails rows of `tree_prompt_logps` are exact: `shares_prompts`, and an attention that
    takes the custom 4D mask (`prefix_tree.MASKS`)."""
    lm = causal_lm(model)
    return shares_prompts(model) and getattr(lm.config, "_attn_implementation", None) in MASKS


def chunked_token_logps(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module,
                        softcap: float | None = None, chunk: int = HEAD_CHUNK) -> torch.Tensor:
    """log softmax(head(hidden[n]))[targets[n]] for N positions, `chunk` rows at a time, in at least float32.
    Shapes: hidden (N, H), targets (N,) -> (N,)."""
    out = []
    for h, y in zip(hidden.split(chunk), targets.split(chunk)):
        logits = head(h.to(head.weight.dtype))  # (n, V)
        if softcap is not None:  # as Gemma 2's forward: cap * tanh(logits / cap), in the model's dtype
            logits = torch.tanh(logits / softcap) * softcap
        out.append(-F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y,
                                    reduction="none"))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


@contextmanager
def caught_hidden(body: torch.nn.Module):
    """A dict whose "hidden" is the last hidden states (B, T, H) of `body`'s forward inside the block."""
    box: dict = {}

    def hook(module, args, output):
        box["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = body.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@contextmanager
def read_last_columns(model, input_ids: torch.Tensor, keep: int):
    """Inside the block, the last decoder layer's feed-forward block runs only at the last `keep` columns of the
    (B, W) `input_ids` (what a forward with `logits_to_keep=keep` reads; `tether.last_layer`), where `head_parts`
    knows the model; yields whether it does."""
    parts = head_parts(model)
    if parts is None:
        yield False
        return
    rows = last_columns(*input_ids.shape, keep, input_ids.device)
    with read_rows_only(causal_lm(model), parts[0], rows) as pruned:
        yield pruned


def forward_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                        response_only: bool = True, **extra) -> torch.Tensor:
    """log p(labels[b, t]) (B, T) at counted positions (labels: next-token targets, IGNORE_INDEX elsewhere), 0
    elsewhere, under one forward of `model`; `extra` goes to the forward (a cache, position ids). With response_only
    (and a model `head_parts` knows), the LM head runs at counted positions only, in chunks."""
    parts = head_parts(model) if response_only else None
    if cache_kwarg(causal_lm(model)) not in extra:  # no cache to build (and compiled layers need none: compile_layers)
        extra = {"use_cache": False, **extra}
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # (B, T, V)
        return token_logps(logits, labels)
    body, head, softcap = parts
    keep = {"logits_to_keep": 1} if accepts(causal_lm(model), "logits_to_keep") else {}
    rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)  # (N,) each
    with caught_hidden(body) as box, read_rows_only(causal_lm(model), body, rows * labels.size(1) + cols):
        model(input_ids=input_ids, attention_mask=attention_mask, **extra, **keep)
    token = chunked_token_logps(box["hidden"][rows, cols], labels[rows, cols], head, softcap)  # (N,)
    return token.new_zeros(labels.shape).index_put((rows, cols), token)  # (B, T)


def forward_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  response_only: bool = True, **extra) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs (B,), counted tokens (B,)) of `labels` under one forward (`forward_token_logps`)."""
    token = forward_token_logps(model, input_ids, attention_mask, labels, response_only, **extra)  # (B, T)
    return token.sum(-1), (labels != IGNORE_INDEX).sum(-1)


# ---------------------------------------------------------------------------------------------
# Shared prompts


def prompt_length(loss_mask: list[int]) -> int:
    """Tokens before the first counted one (the whole sequence when none is counted)."""
    return next((i for i, m in enumerate(loss_mask) if m), len(loss_mask))


def padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), attention mask (B, T)), right-padded."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, :len(s)], mask[row, :len(s)] = torch.tensor(s, dtype=torch.long), 1
    return ids, mask


def chunked_cost(lengths: list[int], overhead: int = PASS_OVERHEAD_TOKENS) -> tuple[list[int], int]:
    """(chunk ends, padded tokens + overhead per pass) of ascending `lengths` cut by `rm_batch.length_chunks`."""
    ends, cost, begin = length_chunks(lengths, overhead), 0, 0
    for end in ends:
        cost, begin = cost + (end - begin) * lengths[end - 1] + overhead, end
    return ends, cost


def prompt_prefixes(sequences: list[list[int]], masks: list[list[int]]) -> list[int] | None:
    """Per sequence, how many of its first tokens run in a shared prompt pass: its prompt less the prompt's last
    token (which predicts the first counted one, so it stays in the tail). None when sharing saves no padded tokens:
    B x T (one plain pass) against the distinct prefixes and the tails, each cut into length chunks (a pass costs
    PASS_OVERHEAD_TOKENS)."""
    cut = [max(prompt_length(m) - 1, 0) for m in masks]
    if min(cut) == 0:
        return None  # a sequence with nothing to share would need an empty prefix row
    prefixes = sorted(len(p) for p in {tuple(s[:k]) for s, k in zip(sequences, cut)})
    tails = sorted(len(s) - k for s, k in zip(sequences, cut))
    shared = chunked_cost(prefixes)[1] + chunked_cost(tails)[1]
    return cut if shared < len(sequences) * max(len(s) for s in sequences) else None


def prefix_caches(model, prefixes: list[tuple], pad_id: int, device) -> tuple[list, torch.Tensor]:
    """The key/value caches of ascending `prefixes`, run in length chunks, joined (`rm_batch.joined_caches`): per
    layer (keys, values) of (G, heads, T_p, d), right-padded to the longest, and the mask (G, T_p)."""
    lm = causal_lm(model)
    keep = {"logits_to_keep": 1} if accepts(lm, "logits_to_keep") else {}
    caches, masks, begin = [], [], 0
    for end in chunked_cost([len(p) for p in prefixes])[0]:
        ids, mask = (t.to(device) for t in padded([list(p) for p in prefixes[begin:end]], pad_id))  # (G_c, T_c)
        caches.append(output_cache(model(input_ids=ids, attention_mask=mask, use_cache=True, **keep)))
        masks.append(mask)
        begin = end
    return joined_caches(caches, masks)


def shared_prompt_logps(model, sequences: list[list[int]], masks: list[list[int]], cut: list[int], pad_id: int,
                        response_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`forward_logps` of the sequences, each distinct prefix s[:cut] run once (no LM head; in length chunks) and
    the tails s[cut:] in length chunks, each after its prefix's cached keys and values at positions cut + t. Equal
    to the plain pass: a causal model's tail sees exactly its prefix's keys and values (the padding masked)."""
    device, lm = distributed.device_of(model), causal_lm(model)
    prefixes = sorted({tuple(s[:k]) for s, k in zip(sequences, cut)}, key=lambda p: (len(p), p))
    row_of = {p: i for i, p in enumerate(prefixes)}
    layers, prefix_mask = prefix_caches(model, prefixes, pad_id, device)  # per layer (G, h, T_p, d); (G, T_p)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]) - cut[i])
    logps, counts, begin = [None] * len(sequences), [None] * len(sequences), 0
    for end in chunked_cost([len(sequences[i]) - cut[i] for i in order])[0]:
        idx = order[begin:end]
        rows = torch.tensor([row_of[tuple(sequences[i][:cut[i]])] for i in idx], device=device)  # (B_c,)
        past = DynamicCache([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in layers])
        ids, attn = (t.to(device) for t in padded([sequences[i][cut[i]:] for i in idx], pad_id))  # (B_c, T_t)
        loss = padded([masks[i][cut[i]:] for i in idx], 0)[0].to(device)  # (B_c, T_t), padded with 0
        before = prefix_mask.index_select(0, rows)  # (B_c, T_p)
        lp, n = forward_logps(model, ids, torch.cat([before, attn], 1), shift_labels(ids, loss), response_only,
                              position_ids=continued_positions(before, attn), **{cache_kwarg(lm): past})
        for j, i in enumerate(idx):
            logps[i], counts[i] = lp[j], n[j]
        begin = end
    return torch.stack(logps), torch.stack(counts)


def tree_prompt_logps(model, sequences: list[list[int]], masks: list[list[int]], cut: list[int], pad_id: int,
                      response_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`shared_prompt_logps` without a cache: each distinct prefix s[:cut] and the tails s[cut:] after it in one row
    under `prefix_tree.tree_mask` (rows in length chunks), so one plain forward (which compiled layers run) per
    chunk. Equal to the plain pass: each tail attends to its prefix and itself, at positions cut + t."""
    device, lm = distributed.device_of(model), causal_lm(model)
    logps, counts = [None] * len(sequences), [None] * len(sequences)
    prefixes = [s[:k] for s, k in zip(sequences, cut)]
    for tails, rows in rows_by_prefix(sequences, prefixes, pad_id, lambda w: chunked_cost(w)[0], device):
        labels = torch.full_like(rows.input_ids, IGNORE_INDEX)  # (R, W): each tail's own next tokens
        for i, (row, at, n) in zip(tails, rows.spans):
            tail = torch.tensor([sequences[i][cut[i]:]], device=device)  # (1, n)
            labels[row, at:at + n] = shift_labels(tail, torch.tensor([masks[i][cut[i]:]], device=device))[0]
        mask = tree_mask(rows.segments, lm.config._attn_implementation, lm.dtype)  # (R, 1, W, W)
        token = forward_token_logps(model, rows.input_ids, mask, labels, response_only,
                                    position_ids=rows.position_ids)  # (R, W)
        for i, (row, at, n) in zip(tails, rows.spans):
            logps[i], counts[i] = token[row, at:at + n].sum(), (labels[row, at:at + n] != IGNORE_INDEX).sum()
    return torch.stack(logps), torch.stack(counts)


def response_logps(model, sequences: list[list[int]], masks: list[list[int]], pad_id: int,
                   fast: FastPaths = FastPaths()) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs (B,), counted tokens (B,)) of each sequence's tokens whose loss mask is 1 (each predicted
    from the tokens before it), in one micro-batch, through the shortcuts `fast` allows where they are exact."""
    cut = prompt_prefixes(sequences, masks) if fast.share_prompts and shares_prompts(model) else None
    if cut is not None:
        share = tree_prompt_logps if fast.tree and tree_shares(model) else shared_prompt_logps
        return share(model, sequences, masks, cut, pad_id, fast.response_only)
    device = distributed.device_of(model)
    ids, attn = padded(sequences, pad_id)
    loss, _ = padded(masks, 0)
    return forward_logps(model, ids.to(device), attn.to(device), shift_labels(ids, loss).to(device),
                         fast.response_only)

"""Fast batched rollouts for RLHF: sample responses with a KV cache, and recompute their log-probs.

`sample` drives the Hugging Face model's own forward pass token by token, with HF's own KV cache. It beats
`generate` by doing less around that forward, not by changing the model:

- sampling by inverse CDF, one uniform draw per row, where `torch.multinomial` draws one exponential per
  vocabulary entry (a fifth of `generate`'s step on the "demo" model at batch 64, CPU);
- no logits processors, stopping criteria or per-step Python over the batch; outputs and the attention mask
  are preallocated and written one column per step;
- finished rows leave the batch (their rows of the DynamicCache, `PRUNE_FRACTION`), where `generate` keeps
  decoding them until the longest row ends: the demo's evaluations, 240 rows of about 17 tokens with a longest of
  48, sample twice as fast in one batch.

What is left is the model's forward: on CPU with tether's tiny models, the fp32 matmuls, SDPA's attention
kernel and HF's per-layer Python. `cache="static"` (HF's StaticCache: in-place writes, no per-step `cat`)
measured no faster than the default DynamicCache on CPU, because attention then runs over the full
prompt + max_new_tokens length every step; see benchmarks/bench_rollout.py.

Fixed shapes, CUDA graphs. With `cache="static"` every decoding step has the same shapes: (B, 1) input ids and
position ids, the full (B, L) attention mask with the columns not yet written at 0, and the StaticCache, whose own
in-place length tensor says where to write and what the causal mask allows (transformers 5 passes no
`cache_position`). `compile=True` then runs the decoding steps through `torch.compile(mode="reduce-overhead",
fullgraph=True)`, which captures them in a CUDA graph on a GPU, as `generate` does with a static cache
(`GenerationMixin._valid_auto_compile_criteria`, `PreTrainedModel.get_compiled_call`, HF's `CompileConfig`
defaults): the prefill stays eager, and the cache is sized to the longest L any earlier call on the model needed
(`_prepare_static_cache`) and kept for the next call, so that later calls replay the captured graphs. On a CPU it
compiles with Inductor but there are no CUDA graphs. Sampling and the stop test stay outside the graph: the draws
come from the same generator or noise, so a static rollout has the tokens of a dynamic one.

Log-probs. `Rollout.logprobs` are the log-probs of the sampled tokens under softmax(logits / temperature),
the full tempered distribution, never renormalised after top-k/top-p truncation. PPO's old log-probs must be
what a plain forward pass recomputes (`logprobs_of`), and both references recompute them that way:
lm-human-preferences (`Policy.analyze_responses`: `logits /= self.temperature`) and the N+ implementation
details paper (Huang et al. 2024, arXiv:2403.17031; its code and TRL's PPO: `logits /= temperature + 1e-7`,
then log_softmax). Neither truncates during PPO rollouts (top_k=0, top_p=1). lm-human-preferences' own
sampler, when asked to truncate, took log-probs from the truncated logits, which no forward pass reproduces.
With top-k/top-p here, tokens come from the truncated distribution while log-probs stay those of the
tempered one: such rollouts are slightly off-policy, so keep top_k=0 and top_p=1 for PPO.

Greedy decoding (temperature 0) reports the log-probs of softmax(logits), i.e. temperature 1, and
`logprobs_of` treats temperature <= 0 the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from tether.generation import left_pad
from tether.logprobs import read_last_columns
from tether.models import cache_kwarg


@dataclass
class Rollout:
    """A batch of B sampled responses; R is the number of decoding steps run (<= max_new_tokens).

    Decoding stops as soon as every row has ended (produced EOS, or was ended by `sample`'s `on_step`), so R can be
    shorter than max_new_tokens.
    """

    prompt_ids: torch.Tensor
    """(B, P) long: prompts left-padded with pad_token_id."""
    prompt_mask: torch.Tensor
    """(B, P) long: 1 on prompt tokens, 0 on left padding."""
    response_ids: torch.Tensor
    """(B, R) long: sampled tokens, then pad_token_id after the row's end (its EOS, or `on_step`'s)."""
    response_mask: torch.Tensor
    """(B, R) long: 1 on sampled tokens up to and including the row's last (its EOS, or `on_step`'s), 0 after."""
    logprobs: torch.Tensor
    """(B, R) float32: log-prob of each sampled token under softmax(logits / temperature); 0 where masked."""
    has_eos: torch.Tensor
    """(B,) bool: the row produced EOS within R tokens."""
    lengths: torch.Tensor
    """(B,) long: generated tokens per row, EOS included (= response_mask.sum(1))."""


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature in float32; temperature <= 0 (greedy) counts as 1."""
    logits = logits.float()
    return logits / temperature if temperature > 0 and temperature != 1.0 else logits


def token_logprobs(scaled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(scaled)[tokens]: (..., V), (...) -> (...), without materialising the log-softmax."""
    return scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - scaled.logsumexp(-1)


def filter_logits(scaled: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) -> (B, V) with the tokens outside top-k and outside the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p (Holtzman et al.
    2020); the most likely token always stays. top_k=0 and top_p=1 leave the logits as they are.
    """
    if top_k > 0 and top_k < scaled.size(-1):
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens above it already reach top_p; the first one is never dropped.
        drop = (probs.cumsum(-1) - probs) >= top_p  # (B, V)
        scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return scaled


def _draw(scaled: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from softmax(scaled) by inverse CDF: (B, V) -> (B,).

    One uniform per row instead of multinomial's one exponential per vocabulary entry, from `generator`, or the
    given `noise` (B, 1) in [0, 1). Tokens at -inf have zero mass, so the CDF does not rise at them and
    `searchsorted(right=True)` never lands on them.
    """
    probs = (scaled - scaled.amax(-1, keepdim=True)).exp_()  # (B, V), unnormalised
    cdf = probs.cumsum(-1, dtype=torch.float64)  # (B, V); float64 keeps the tail exact on large vocabularies
    if noise is None:
        noise = torch.rand(cdf.size(0), 1, generator=generator, dtype=cdf.dtype, device=cdf.device)
    u = noise.to(cdf) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max_(cdf.size(-1) - 1)  # (B,)


def sample_seed(seed: int, step: int, row: int) -> int:
    """The seed of the sampling noise of global row `row` at `step`: who samples the row does not matter."""
    return (seed * 1_000_003 + step) * 1_000_003 + row


def row_noise(seeds: Sequence[int], steps: int, device=None) -> torch.Tensor:
    """(B, steps) float64 uniforms in [0, 1) for `sample(noise=...)`, row b from a generator seeded seeds[b].

    A row's sampling noise then depends on its own seed only, not on which rows share its batch: split over
    processes (each rank sampling its own rows), the samples are those one process would draw.
    """
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device)


def _new_cache(model, length: int, kind: str) -> dict:
    """The forward kwarg holding a fresh HF cache of up to `length` tokens: "static" or "dynamic"."""
    if kind == "static":
        kv = StaticCache(config=model.config, max_cache_len=length)
    elif kind == "dynamic":
        kv = DynamicCache(config=model.config)
    else:
        raise ValueError(f"cache: {kind!r} is not 'static' or 'dynamic'")
    return {cache_kwarg(model): kv, "use_cache": True}


COMPILE_OPTIONS = {"mode": "reduce-overhead", "fullgraph": True}
"""`torch.compile` options of the decoding step with compile=True: HF's `CompileConfig(fullgraph=True)` (its
default mode, reduce-overhead, is CUDA graphs on a GPU). fullgraph: a graph break would silently split the step."""


def cache_length(model, needed: int, compile: bool) -> int:
    """Slots of the static cache: `needed` (prompt + max_new_tokens), or when compiling the most that any call on
    `model` has needed so far, so that a shorter later call reuses the compiled shapes instead of recompiling
    (transformers' `_prepare_static_cache` keeps `_previous_max_cache_length` for the same reason)."""
    if not compile:
        return needed
    length = max(needed, getattr(model, "_tether_cache_length", 0))
    model._tether_cache_length = length
    return length


def decode_call(model, compile: bool) -> Callable:
    """The callable that runs the decoding steps: `model` itself, or its `__call__` compiled with COMPILE_OPTIONS,
    made once per model (as `PreTrainedModel.get_compiled_call`). Compiling the object given, not the HF model under
    it, keeps a LoRA wrapper in the graph. The owner's id is kept with it: a deepcopy (the frozen reference) copies
    the attribute, and must not run the original's weights."""
    if not compile:
        return model
    owner, call = getattr(model, "_tether_compiled_call", (None, None))
    if owner != id(model):
        call = torch.compile(_autocast_call(model), **COMPILE_OPTIONS)
        model._tether_compiled_call = (id(model), call)
    return call


def _autocast_call(model) -> Callable:
    """`model.__call__`, or for a model under bf16 autocast hooks (`tether.distributed.autocast_forward`, which
    dynamo cannot trace: a context entered in one hook and left in another) its `forward` inside one
    `torch.autocast` block, the same computation in a form torch.compile captures whole."""
    dtype = getattr(model, "_tether_autocast", None)
    if dtype is None:
        return model.__call__

    def call(**kwargs):
        with torch.autocast("cuda", dtype=dtype):
            return model.forward(**kwargs)

    return call


def sample(
    model,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    cache: str = "dynamic",
    compile: bool = False,
    noise: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor], bool | Sequence[bool] | None] | None = None,
) -> Rollout:
    """Sample one response per prompt with the model's KV cache; greedy when temperature == 0.

    `eos_token_id` is the stop token or tokens (a chat format's end-of-turn token and eos: `ChatFormat.stop_ids`).
    A row that has produced one gets pad tokens (mask 0, log-prob 0) until every row is done or max_new_tokens is
    reached; with the dynamic cache, finished rows leave the forward pass (`PRUNE_FRACTION`). Under greedy decoding
    the tokens equal `model.generate(do_sample=False)` (up to the float rounding of different batch shapes: a
    near-tie between two tokens could break the other way).
    `cache` picks HF's DynamicCache (default) or StaticCache (fixed-shape steps); `compile=True` (static cache only)
    runs its steps through `torch.compile`, CUDA graphs on a GPU (the module docstring). Call `model.eval()` first
    (dropout). `noise` (B, max_new_tokens) uniforms (`row_noise`), when given, replace the draws from `generator`.
    `on_step(t, tokens)`, when given, sees each step's (B,) tokens as they are drawn (a server streams them) and
    may end rows as a stop token does, without counting as EOS: True ends them all, a sequence of B flags the
    flagged ones (a client's stop string, its max_tokens, its cancelled request).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: {max_new_tokens} must be >= 1")
    if not prompt_ids or min(map(len, prompt_ids)) == 0:
        raise ValueError("prompt_ids: need at least one prompt, and no empty prompt")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_k: {top_k} must be >= 0 and top_p: {top_p} in (0, 1]")
    if compile and cache != "static":
        raise ValueError(f"compile: needs cache='static' (fixed shapes), not {cache!r}")
    with torch.inference_mode():
        rollout = _sample(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id,
                          generator, cache, noise, on_step, compile)
    # Inference tensors cannot be saved for backward: PPO gathers with response_ids under autograd. Cloning
    # outside inference mode gives ordinary tensors, for the cost of copying a few (B, R) tensors.
    return Rollout(**{f.name: getattr(rollout, f.name).clone() for f in fields(Rollout)})


def _decoding_state(model, mask: torch.Tensor, R: int, cache: str, compile: bool) -> tuple[dict, torch.Tensor]:
    """The cache kwargs and the (B, L) attention mask, the prompt's (B, P) `mask` then zeros, one column of ones
    added per decoding step; L = P + R, or more for a compiled static cache (`cache_length`)."""
    B, P = mask.shape
    L = cache_length(model, P + R, compile) if cache == "static" else P + R
    attn = torch.zeros(B, L, dtype=torch.long, device=mask.device)  # (B, L)
    attn[:, :P] = mask
    if compile:
        return {cache_kwarg(model): _reused_cache(model, B, L), "use_cache": True}, attn
    return _new_cache(model, L, cache), attn


def _reused_cache(model, batch: int, length: int) -> StaticCache:
    """The StaticCache of the model's last compiled call, emptied in place (`reset`), when its batch and length
    fit; else a new one, kept for the next call. CUDA graphs read the cache at the addresses they were recorded with:
    a new cache each call would make cudagraph trees re-record every call, and past their re-record limit run
    without graphs. The price: the cache's memory stays allocated between rollouts, as the graphs' own pool does."""
    owner, shape, kv = getattr(model, "_tether_static_cache", (None, None, None))
    if owner == id(model) and shape == (batch, length):
        kv.reset()
        return kv
    kv = StaticCache(config=model.config, max_cache_len=length)
    model._tether_static_cache = (id(model), (batch, length), kv)
    return kv


PRUNE_FRACTION = 0.25
"""A dynamic-cache batch drops its finished rows (their cache, mask and positions) once they are at least this
fraction of the rows still in its forward: a finished row would otherwise cost a full row of every later step
(half the decoding work of the demo's evaluations and audits, whose responses are mostly far shorter than the
longest). A quarter bounds that waste at 25% with a handful of cache copies per batch (each prune keeps at most 3/4
of the rows). Fixed-shape (static, compiled) decoding keeps every row."""


def _sample(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, generator,
            cache, noise, on_step=None, compile=False) -> Rollout:
    """`sample`'s loop, run under inference mode. `rows` are the batch rows still in the forward pass (all of them
    with a static cache); every output stays (B, R), written at those rows."""
    device = next(model.parameters()).device
    stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    ids, mask = (t.to(device) for t in left_pad(prompt_ids, pad_token_id))  # (B, P), (B, P)
    B, P = ids.shape
    R = max_new_tokens
    kv, attn = _decoding_state(model, mask, R, cache, compile)  # attn: (B, L), L >= P + R
    decode = decode_call(model, compile)
    fixed = cache == "static"  # every step passes the whole mask: one shape, capturable in a CUDA graph
    response = torch.full((B, R), pad_token_id, dtype=torch.long, device=device)  # (B, R)
    logprobs = torch.zeros(B, R, dtype=torch.float32, device=device)  # (B, R)
    alive = torch.ones(B, R, dtype=torch.bool, device=device)  # (B, R): row still decoding at step t
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,): produced a stop token
    ended = torch.zeros(B, dtype=torch.bool, device=device)  # (B,): done, or stopped by `on_step`
    rows = torch.arange(B, device=device)  # (b,): the rows in the forward pass

    # 1. Prefill the prompt once. Positions count real tokens only, so left padding does not shift them
    #    (as `generate` does: cumsum of the mask - 1, pads at 0).
    position = (mask.cumsum(-1) - 1).clamp_min_(0)  # (B, P)
    out = model(input_ids=ids, attention_mask=attn[:, :P], position_ids=position, logits_to_keep=1, **kv)
    position = position[:, -1:] + 1  # (b, 1)
    steps = R
    for t in range(R):
        # 2. Pick the next token of each row in the pass from its last logits (ended rows: pad, log-prob 0).
        scaled = scale_logits(out.logits[:, -1, :], temperature)  # (b, V)
        picked = scaled.argmax(-1) if temperature <= 0 else \
            _draw(filter_logits(scaled, top_k, top_p), None, _uniforms(B, generator, noise, t, device)[rows])  # (b,)
        token = torch.full((B,), pad_token_id, dtype=torch.long, device=device).index_copy_(0, rows, picked)
        alive[:, t] = ~ended
        token.masked_fill_(ended, pad_token_id)
        response[:, t] = token
        logprobs[rows, t] = token_logprobs(scaled, picked)
        logprobs[:, t].masked_fill_(ended, 0.0)
        # 3. A row ends at a stop token or where `on_step` says; decoding ends when no row in the pass is left.
        done |= torch.isin(token, stops) & ~ended
        ended |= done | _stopped_by(on_step, t, token)
        left = int((~ended[rows]).sum())
        if t == R - 1 or left == 0:
            steps = t + 1
            break
        if not fixed and rows.numel() - left >= max(1, PRUNE_FRACTION * rows.numel()) and _prunable(kv):
            keep = (~ended[rows]).nonzero().squeeze(1)  # (b',) positions in the pass
            _cache(kv).batch_select_indices(keep)
            rows, attn, position = rows[keep], attn[keep], position[keep]
        # 4. Feed it back: one new cache column per step, the prompt is never recomputed. A compiled step's outputs
        #    live in its CUDA graph's memory until the next replay: this step's logits were read above.
        attn[:, P + t] = 1
        if compile:
            torch.compiler.cudagraph_mark_step_begin()
        out = decode(input_ids=token[rows, None], attention_mask=attn if fixed else attn[:, : P + t + 1],
                     position_ids=position, **kv)
        position += 1
    response_mask = alive[:, :steps].long()  # (B, R)
    lengths = response_mask.sum(1)  # (B,)
    return Rollout(prompt_ids=ids, prompt_mask=mask, response_ids=response[:, :steps],
                   response_mask=response_mask, logprobs=logprobs[:, :steps], has_eos=done,
                   lengths=lengths)


def _uniforms(B: int, generator: torch.Generator | None, noise: torch.Tensor | None, t: int, device) -> torch.Tensor:
    """(B, 1) step-t uniforms of every row, in or out of the forward pass: from `noise`, or B draws from
    `generator` (always B, so a row's draws do not depend on which rows have finished)."""
    if noise is not None:
        return noise[:, t:t + 1].to(device)  # indexed by the rows in the pass, which live on the model's device
    return torch.rand(B, 1, generator=generator, dtype=torch.float64, device=device)


def _stopped_by(on_step, t: int, token: torch.Tensor) -> torch.Tensor | bool:
    """The rows `on_step(t, token)` stops: all of them on True, none on False or None, those flagged in a sequence
    of B flags."""
    stopped = None if on_step is None else on_step(t, token)
    if stopped is None or isinstance(stopped, bool):
        return bool(stopped)
    flags = torch.as_tensor(stopped, dtype=torch.bool, device=token.device)
    if flags.shape != token.shape:
        raise ValueError(f"on_step: returned {tuple(flags.shape)} flags for a batch of {token.size(0)} rows")
    return flags


def _cache(kv: dict):
    return next(v for k, v in kv.items() if k != "use_cache")


def _prunable(kv: dict) -> bool:
    """Whether the rows of the pass's cache can be dropped: a DynamicCache of plain key/value layers (full or
    sliding-window attention). Layers with other state (linear-attention or quantised caches) keep every row."""
    cache = _cache(kv)
    return isinstance(cache, DynamicCache) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer)
                                                   for layer in cache.layers)


def logprobs_of(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """(B, R) log-probs of `response_ids` under softmax(logits / temperature), 0 where response_mask is 0.

    One plain forward pass over [prompt; response] (B, P + R), the way PPO recomputes old and reference
    log-probs; it runs under the caller's grad mode. prompt_*: (B, P) left-padded; response_*: (B, R).
    Token t of the response is predicted by the logits at position P - 1 + t.
    """
    R = response_ids.size(1)
    ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P + R)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()  # (B, P + R)
    position = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, P + R)
    # Only the last R + 1 positions feed the lm_head (the last one predicts past the response), and the last
    # decoder layer's feed-forward block runs there only (tether.last_layer).
    with read_last_columns(model, ids, R + 1):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position, logits_to_keep=R + 1).logits
    scaled = scale_logits(logits[:, :-1, :], temperature)  # (B, R, V)
    return token_logprobs(scaled, response_ids) * response_mask  # (B, R)

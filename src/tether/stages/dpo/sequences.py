"""What the pair losses and KTO share below the loop: responses encoded after their prompt, one forward pass to
summed log-probs, an optimizer step's exact gradient accumulation over micro-batches, and π_ref's log-probs
computed once and cached under a digest of the reference weights and of every scored sequence.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from tether import distributed
from tether.chat import ChatFormat, Encoded
from tether.checkpoint import cached_tensors
from tether.logprobs import FastPaths, response_logps
from tether.progress import progress_bar
from tether.training import Example

CACHE = "ref_logps.safetensors"
"""The cached reference log-probs, in the run folder."""


def encode_responses(fmt: ChatFormat, prompts: list, responses: list[str], max_length: int,
                     max_prompt_length: int | None = None) -> list[Encoded]:
    """prompt + response of each row (tether.chat), the mask on the response and its end-of-turn token only."""
    return fmt.encode_many(list(zip(prompts, responses)), max_length, max_prompt_length)


def fast_paths(cfg) -> FastPaths:
    """The exact shortcuts cfg (a DPOConfig) allows the log-prob passes (`tether.logprobs`)."""
    return FastPaths(response_only=cfg.response_only_head, share_prompts=cfg.share_prompts)


def example(e: Encoded) -> Example:
    return Example(e.input_ids, e.loss_mask)  # the ids and mask a training step reads


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def forward_examples(model, examples: list[Example], pad_id: int, fast: FastPaths = FastPaths()
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed log-probs (B,) and counted tokens (B,) of each sequence in one forward pass (a shared-prompt pass and
    a tail pass where `fast` allows and that is exact: `tether.logprobs`), and the sequences' non-padding tokens.
    `model` may be a DDP wrapper, or LoRA's base view."""
    logps, counts = response_logps(model, [e.input_ids for e in examples], [e.loss_mask for e in examples], pad_id,
                                   fast)  # (B,), (B,)
    return logps, counts, sum(len(e.input_ids) for e in examples)


# ---------------------------------------------------------------------------------------------
# Sums over micro-batches


def add_sums(total: dict, sums: dict) -> None:
    for key, value in sums.items():
        total[key] = total.get(key, 0) + value


def step_sums(model, items: list, micro_batch_size: int, forward: Callable, losses: Callable,
              sums: Callable) -> dict:
    """Forward and backward of one optimizer step over `items`, in micro-batches of micro_batch_size; returns the
    sums of `sums(batch, losses)` over all of them (and all ranks).

    Each micro-batch's summed item losses are divided by the items of the whole step, so the gradient equals that
    of one big batch however the step is split. Under torchrun each rank runs its share of the micro-batches
    (`distributed.shard`, weight 0 for the padding ones) and the sums are all-reduced.
    """
    total: dict = {}
    share = distributed.shard(chunks(items, micro_batch_size))
    for i, (micro, real) in enumerate(share):
        with distributed.accumulating(model, last=i == len(share) - 1):
            batch = forward(micro)
            item_losses = losses(batch)  # (M,)
            distributed.normalised(item_losses.sum(), len(items), real).backward()
        step = sums(batch, item_losses)
        add_sums(total, step if real else dict.fromkeys(step, 0))
    return distributed.all_reduce_sum(total)


@torch.no_grad()
def held_out_sums(items: list, micro_batch_size: int, forward: Callable, losses: Callable, sums: Callable) -> dict:
    """The sums of `sums(batch, losses)` over `items` without gradients (every rank computes them alike)."""
    total: dict = {}
    for micro in chunks(items, micro_batch_size):
        batch = forward(micro)
        add_sums(total, sums(batch, losses(batch)))
    return total


# ---------------------------------------------------------------------------------------------
# Reference log-probs, computed once and cached


def weights_digest(model) -> str:
    """sha256 of a model's weights: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sequences_key(kind: str, ref_model, examples: list[Example]) -> str:
    """The cache key of `kind`'s reference log-probs: sha256 of the reference's weights and of every scored sequence
    (so of data, tokenizer, max_length and order)."""
    h = hashlib.sha256(f"tether-{kind}-reference-v2 {weights_digest(ref_model)}".encode())
    for e in examples:
        h.update(json.dumps([e.input_ids, e.loss_mask]).encode())
    return h.hexdigest()


@torch.no_grad()
def summed_logps(model, examples: list[Example], batches: list[list[int]], pad_id: int, label: str,
                 fast: FastPaths = FastPaths()) -> torch.Tensor:
    """Summed log-probs (E,) of `examples` in eval mode, one forward pass per batch of indices in `batches`."""
    out = torch.zeros(len(examples))  # (E,)
    was_training = model.training
    model.eval()
    with progress_bar(label, total=len(examples)) as bar:
        for idx in batches:
            out[idx] = forward_examples(model, [examples[i] for i in idx], pad_id, fast)[0].float().cpu()
            bar.update(len(idx))
    model.train(was_training)
    return out


def cached_logps(key: str, ref_model, examples: list[Example], batches: list[list[int]], pad_id: int, cache: Path,
                 label: str, fast: FastPaths = FastPaths()) -> tuple[list[float], bool]:
    """(log-probs, hit): π_ref's summed log-probs of `examples` from `cache` when its key is `key`, else computed by
    `summed_logps` and saved there (rank 0 writes)."""
    compute = lambda: {"logps": summed_logps(ref_model, examples, batches, pad_id, label, fast)}  # noqa: E731
    logps, hit = cached_tensors(cache, key, compute, write=distributed.is_main())
    return logps["logps"].tolist(), hit

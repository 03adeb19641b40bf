"""The causal-LM training loop shared by `tether pretrain` and `tether sft`.

Both stages train next-token prediction on examples `(input_ids, loss_mask)`; they differ only in
which tokens count (every token for pretraining, assistant tokens for SFT), which the mask carries.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tether import distributed
from tether.config import check, save_config
from tether.guard import NonFiniteGuard
from tether.logprobs import forward_token_logps, head_parts
from tether.lora import adapt
from tether.math.losses import IGNORE_INDEX, token_nll_sum
from tether.models import accepts, save_pretrained
from tether.optim import adamw, lr_at
from tether.progress import progress_bar
from tether.training import (
    BatchPlan,
    Example,
    MetricsLog,
    TrainConfig,
    collate,
    compile_model,
    due,
    resume_training,
    save_training_state,
    total_steps,
)


Collate = Callable[[list[Example], int], dict[str, torch.Tensor]]
"""(examples, pad_id) -> a micro-batch's tensors: `collate` (padded) or `tether.packing.packed_collate` (packed)."""


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded (train, eval) split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    k = int(len(examples) * fraction)
    return [examples[i] for i in order[k:]], [examples[i] for i in order[:k]]


def batch_loss(model, batch: dict[str, torch.Tensor], response_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, counted tokens) of one micro-batch, moved to the model's device: padded (`collate`: an attention
    mask) or packed (`tether.packing.collate_packed`: position ids restarting per conversation, no mask).

    With response_only (and an architecture `tether.logprobs.head_parts` knows), the LM head and the softmax run
    only at the counted positions, in chunks (`forward_token_logps`). Otherwise:

    Positions before the first counted one of any row (the prompts every row starts with, in SFT) train nothing:
    the model computes logits only from there on (HF's `logits_to_keep`), sparing the LM head and the softmax
    over the vocabulary there. The model's own forward does it, so any logit scaling it applies still applies."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch["labels"]  # (B, T)
    attention = batch.get("attention_mask")  # None in a packed batch (tether.packing)
    # Never a cache: nothing reads it, compiled layers run only without one (distributed.compile_layers), and in a
    # packed batch (no mask) transformers would not read the conversations' bounds from the positions with one.
    inputs = {"use_cache": False, **({"position_ids": batch["position_ids"]} if "position_ids" in batch else {})}
    if response_only and head_parts(model) is not None:
        token = forward_token_logps(model, batch["input_ids"], attention, labels, **inputs)  # (B, T)
        return -token.sum(), (labels != IGNORE_INDEX).sum()
    counted = (labels != IGNORE_INDEX).any(0).nonzero()
    keep = labels.size(1) - int(counted[0]) if len(counted) else 1
    extra = {"logits_to_keep": keep} if keep < labels.size(1) and accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=attention, **inputs, **extra).logits  # (B, K, V)
    return token_nll_sum(logits, labels[:, labels.size(1) - logits.size(1):])


def counted_tokens(examples: list[Example]) -> int:
    """Tokens whose prediction is trained: position t counts when loss_mask[t + 1] is 1 (`shift_labels`)."""
    return sum(sum(e.loss_mask[1:]) for e in examples)


def train_step(model, optimizer, examples: list[Example], cfg: TrainConfig, pad_id: int, lr: float,
               guard: NonFiniteGuard | None = None, batches: Collate = collate) -> dict:
    """One optimizer step over `examples`, split into micro-batches with gradient accumulation.

    Every micro-batch's summed loss is divided by the token count of the *whole* step, so the
    gradient equals that of one big batch whatever the split. Under torchrun each rank runs its share of the
    micro-batches (`distributed.shard`) and the count is divided by the ranks, whose gradients DDP averages.
    `guard` (the run's, else a fresh one from cfg) skips or halts the update on a non-finite loss or gradient.
    `batches` turns a micro-batch's examples into tensors (`collate`, padded; or packed, tether.packing).
    """
    micro = [examples[i:i + cfg.micro_batch_size] for i in range(0, len(examples), cfg.micro_batch_size)]
    n_tokens = max(counted_tokens(examples), 1)
    share = distributed.shard(micro)
    total, seq_tokens = 0.0, 0
    for i, (examples_i, real) in enumerate(share):
        batch = batches(examples_i, pad_id)
        with distributed.accumulating(model, last=i == len(share) - 1):
            nll, _ = batch_loss(model, batch, cfg.response_only_head)
            distributed.normalised(nll, n_tokens, real).backward()
        total += float(nll.detach()) if real else 0.0
        seq_tokens += sum(len(e.input_ids) for e in examples_i) if real else 0
    total, seq_tokens = distributed.all_reduce_sum({"nll": total, "tokens": seq_tokens}).values()
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, total / n_tokens)
    return {"loss": total / n_tokens, "grad_norm": grad_norm, "lr": lr, "tokens": int(seq_tokens),
            "nonfinite_skips": skipped}


@torch.no_grad()
def eval_loss(model, examples: list[Example], pad_id: int, batch_size: int = 32, response_only: bool = True,
              batches: Collate = collate) -> float:
    """Mean NLL per counted token of `examples` (every rank computes the same: it runs on all of them)."""
    model.eval()
    nll, count = 0.0, 0
    with distributed.eager():
        for i in range(0, len(examples), batch_size):
            s, n = batch_loss(model, batches(examples[i:i + batch_size], pad_id), response_only)
            nll, count = nll + float(s), count + int(n)
    model.train()
    return nll / max(count, 1)


def train_lm(cfg: TrainConfig, model, tokenizer, examples: list[Example], stage: str,
             batches: Collate = collate) -> Path:
    """Train `model` on `examples`; returns the folder of the final model (`out/model`). With cfg.lora, peft
    adapts `model` in place (its linear layers gain adapters). `batches` collates each micro-batch (padded, or
    packed: tether.packing)."""
    # 1. Device (and the process group under torchrun), run folder, seeds, held-out split, data order.
    device = distributed.setup(cfg)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    train, held_out = split_eval(examples, cfg.eval_fraction, cfg.seed)
    check(len(train) >= cfg.batch_size, "batch_size", f"larger than the {len(train)} training examples")
    steps, per_epoch = total_steps(cfg, len(train)), len(train) // cfg.batch_size
    plan = BatchPlan([len(e.input_ids) for e in train], cfg.batch_size, cfg.bucket_size, cfg.seed)
    # 2. LoRA; the model on the device (bf16, gradient checkpointing) and wrapped for the ranks (DDP: `net` is a
    #    wrapper; FSDP2: the model, sharded); optimizer (trainable weights only); resume restores weights,
    #    optimizer moments and RNG.
    model = distributed.prepare(adapt(model, cfg), cfg, device)
    compile_model(cfg, model)
    net = distributed.wrap(model, cfg.strategy)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2))
    start = resume_training(cfg, run_dir, model, optimizer)
    log = MetricsLog(run_dir / "metrics.jsonl", start, cfg)
    guard = NonFiniteGuard.from_config(cfg, start)
    model.train()
    pad_id = tokenizer.pad_token_id
    started, tokens_seen = time.perf_counter(), 0
    with progress_bar(f"{stage}", total=steps, completed=start) as bar:
        for step in range(start, steps):
            # 3. The step's batch is a pure function of (seed, step): nothing else to restore.
            batch = [train[i] for i in plan(step)]
            # 4. Forward, backward (accumulated), clip, step at the scheduled learning rate.
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, steps, cfg.min_lr_ratio)
            row = {"step": step + 1, "epoch": step / per_epoch,
                   **train_step(net, optimizer, batch, cfg, pad_id, lr, guard, batches)}
            tokens_seen += row["tokens"]
            row["tokens_per_s"] = tokens_seen / (time.perf_counter() - started)
            # 5. Eval loss, metrics, checkpoints.
            last = step + 1 == steps
            if held_out and due(step + 1, cfg.eval_every, last):
                row["eval_loss"] = eval_loss(model, held_out, pad_id, cfg.micro_batch_size, cfg.response_only_head,
                                             batches)
            if due(step + 1, cfg.log_every, last) or "eval_loss" in row:
                log.write(row)
            if due(step + 1, cfg.save_every) and not last:
                save_training_state(run_dir, step + 1, model, optimizer, tokenizer, cfg.keep_checkpoints)
            bar.update(1, loss=row["loss"])
    log.close()
    # 6. The final model as a plain Hugging Face folder (rank 0), refused if non-finite (tether.guard).
    final = run_dir / "model"
    distributed.on_main(model, lambda plain: save_pretrained(plain, tokenizer, str(final)))
    distributed.barrier()  # every rank returns once the model is on disk
    return final

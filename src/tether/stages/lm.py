"""The causal-LM training loop shared by `tether pretrain` and `tether sft`.

Both stages train next-token prediction on examples `(input_ids, loss_mask)`; they differ only in
which tokens count (every token for pretraining, assistant tokens for SFT), which the mask carries.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tether import distributed, tracking
from tether.chat_templates import check_template_setting
from tether.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tether.config import check, save_config
from tether.distributed import DistributedConfig
from tether.errors import TetherError
from tether.guard import NONFINITE_POLICIES, NonFiniteGuard
from tether.lora import (
    LoraOptions,
    adapt,
    has_adapters,
    load_adapter_checkpoint,
    refuse_adapter_checkpoint,
)
from tether.math.losses import IGNORE_INDEX, shift_labels, token_nll_sum
from tether.models import accepts, load_policy, save_pretrained
from tether.optim import adamw, lr_at
from tether.progress import progress_bar


@dataclass
class Example:
    """One training sequence: token ids and a 0/1 mask of the tokens whose prediction is trained."""

    input_ids: list[int]
    loss_mask: list[int]


@dataclass
class TrainConfig(DistributedConfig):
    """Optimisation settings shared by the causal-LM stages (each stage's config extends this)."""

    out: str = "runs/train"
    """Run folder: metrics.jsonl, config.yaml, checkpoints/, model/ (the final HF folder)."""
    seed: int = 0
    """Seed of initialisation, data order and sampling."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed); ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to run; None: derived from epochs."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    micro_batch_size: int = 32
    """Sequences per forward pass; batch_size / micro_batch_size is the gradient accumulation."""
    max_length: int = 256
    """Longest sequence in tokens; longer ones keep their end (earlier turns dropped first, then tokens from the
    start of the prompt; tether.chat), counted and reported in data_report.json."""
    chat_template: str = ""
    """How conversations become tokens (tether.chat): "" the tokenizer's own chat template, a built-in name (chatml,
    llama3, gemma, zephyr, hh, tether), a .jinja file, or "none" (plain prompt/completion text). A template set here
    is saved with the model, so later stages need no setting."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of lr."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay on weight matrices."""
    adam_beta2: float = 0.99
    """AdamW beta2 (beta1 is 0.9)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    eval_fraction: float = 0.02
    """Share of the data held out for the eval loss."""
    eval_every: int = 100
    """Steps between eval-loss measurements (0: only at the end)."""
    save_every: int = 200
    """Steps between checkpoints (0: only the final model)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept, newest first (0: keep all, e.g. to evaluate a run's whole trajectory)."""
    log_every: int = 10
    """Steps between metric lines in metrics.jsonl."""
    bucket_size: int = 64
    """Batches sorted together by length, so each batch holds sequences of similar length (less padding)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in `out`."""
    nonfinite: Literal["skip", "halt"] = "skip"
    """On a NaN or inf loss or gradient norm: "skip" drops the step's update (gradients zeroed, no optimizer
    step, AdamW moments untouched), counts it as `nonfinite_skips` in metrics.jsonl and goes on; the batch is
    not retried and the learning rate moves on with the step number (a pure function of it, so resume stays
    exact). "halt" raises at once. Either way the weights and the newest complete checkpoint stay finite."""
    max_nonfinite_skips: int = 10
    """Halt anyway after this many consecutive skipped steps: a run that keeps diverging should stop, not burn
    hours producing nothing."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    """LoRA (tether.lora): lora.r > 0 trains low-rank adapters on the frozen model (and a reward model's head);
    checkpoints hold the adapter, out/model the merged weights as a plain HF folder."""

    @property
    def accumulation(self) -> int:
        return self.batch_size // self.micro_batch_size

    def validate(self) -> None:
        super().validate()
        check(self.batch_size > 0, "batch_size", "must be > 0")
        check(0 < self.micro_batch_size <= self.batch_size and self.batch_size % self.micro_batch_size == 0,
              "micro_batch_size", f"must divide batch_size ({self.batch_size})")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.epochs > 0, "epochs", "must be > 0")
        check(self.max_steps is None or self.max_steps > 0, "max_steps", "must be > 0 or null")
        check(self.max_length > 1, "max_length", "must be > 1")
        check_template_setting(self.chat_template)
        check(0 <= self.eval_fraction < 1, "eval_fraction", "must be in [0, 1)")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        check(self.bucket_size >= 1, "bucket_size", "must be >= 1")
        check(self.keep_checkpoints >= 0, "keep_checkpoints", "must be >= 0")
        check(self.nonfinite in NONFINITE_POLICIES, "nonfinite", f"must be one of {', '.join(NONFINITE_POLICIES)}")
        check(self.max_nonfinite_skips >= 1, "max_nonfinite_skips", "must be >= 1")
        # LoRA under FSDP2 trains and saves, but resuming loads the adapter and a reward head with load_state_dict
        # into the sharded weights, which fails (the head) or leans on peft internals (the adapter): refused.
        check(not (self.lora.enabled and self.strategy == "fsdp2"), "strategy",
              "fsdp2 does not combine with LoRA (lora.r > 0): a LoRA checkpoint resumes into whole weights only; use "
              "strategy=ddp (only the adapters' gradients are all-reduced), or lora.r=0 to shard a full fine-tuning")


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded (train, eval) split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    k = int(len(examples) * fraction)
    return [examples[i] for i in order[k:]], [examples[i] for i in order[:k]]


def epoch_batches(lengths: list[int], batch_size: int, bucket_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches of example indices for one epoch, a pure function of (seed, epoch).

    Shuffle, sort each window of `batch_size * bucket_size` examples by length, cut into batches,
    shuffle the batches. Padding waste stays small and resuming only needs the step number.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [b for b in batches if len(b) == batch_size]  # equal-size steps keep the loss scale fixed
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch. Right padding never changes a causal model's earlier positions."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        mask[row, :n] = torch.tensor(e.loss_mask)
    return {"input_ids": ids, "attention_mask": attention, "labels": shift_labels(ids, mask)}


def batch_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, counted tokens) of one micro-batch, moved to the model's device.

    Positions before the first counted one of any row (the prompts every row starts with, in SFT) train nothing:
    the model computes logits only from there on (HF's `logits_to_keep`), sparing the LM head and the softmax
    over the vocabulary there. The model's own forward does it, so any logit scaling it applies still applies."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch["labels"]  # (B, T)
    counted = (labels != IGNORE_INDEX).any(0).nonzero()
    keep = labels.size(1) - int(counted[0]) if len(counted) else 1
    extra = {"logits_to_keep": keep} if keep < labels.size(1) and accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits  # (B, K, V)
    return token_nll_sum(logits, labels[:, labels.size(1) - logits.size(1):])


def counted_tokens(examples: list[Example]) -> int:
    """Tokens whose prediction is trained: position t counts when loss_mask[t + 1] is 1 (`shift_labels`)."""
    return sum(sum(e.loss_mask[1:]) for e in examples)


def train_step(model, optimizer, examples: list[Example], cfg: TrainConfig, pad_id: int, lr: float,
               guard: NonFiniteGuard | None = None) -> dict:
    """One optimizer step over `examples`, split into micro-batches with gradient accumulation.

    Every micro-batch's summed loss is divided by the token count of the *whole* step, so the
    gradient equals that of one big batch whatever the split. Under torchrun each rank runs its share of the
    micro-batches (`distributed.shard`) and the count is divided by the ranks, whose gradients DDP averages.
    `guard` (the run's, else a fresh one from cfg) skips or halts the update on a non-finite loss or gradient.
    """
    micro = [examples[i:i + cfg.micro_batch_size] for i in range(0, len(examples), cfg.micro_batch_size)]
    n_tokens = max(counted_tokens(examples), 1)
    share = distributed.shard(micro)
    total, seq_tokens = 0.0, 0
    for i, (examples_i, real) in enumerate(share):
        batch = collate(examples_i, pad_id)
        with distributed.accumulating(model, last=i == len(share) - 1):
            nll, _ = batch_loss(model, batch)
            distributed.normalised(nll, n_tokens, real).backward()
        total += float(nll.detach()) if real else 0.0
        seq_tokens += int(batch["attention_mask"].sum()) if real else 0
    total, seq_tokens = distributed.all_reduce_sum({"nll": total, "tokens": seq_tokens}).values()
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, total / n_tokens)
    return {"loss": total / n_tokens, "grad_norm": grad_norm, "lr": lr, "tokens": int(seq_tokens),
            "nonfinite_skips": skipped}


@torch.no_grad()
def eval_loss(model, examples: list[Example], pad_id: int, batch_size: int = 32) -> float:
    """Mean NLL per counted token of `examples` (every rank computes the same: it runs on all of them)."""
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        s, n = batch_loss(model, collate(examples[i:i + batch_size], pad_id))
        nll, count = nll + float(s), count + int(n)
    model.train()
    return nll / max(count, 1)


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, int(cfg.epochs * (n_examples // cfg.batch_size)))


class MetricsLog:
    """metrics.jsonl; on resume, lines past the resumed step are dropped so nothing is counted twice. Given the run's
    `config`, every row also goes to the trackers of its `report_to` (tether.tracking) until `close()`."""

    def __init__(self, path: Path, resume_step: int, config: DistributedConfig | None = None):
        self.path, self.enabled = path, distributed.is_main()  # under torchrun only rank 0 writes
        self.trackers = tracking.Trackers()
        if not self.enabled:
            return
        kept = []
        if resume_step > 0 and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
        path.write_text("".join(ln + "\n" for ln in kept))
        if config is not None:
            self.trackers = tracking.start(config, path.parent, resume_step)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.trackers.log(row)

    def close(self) -> None:
        """Finish the trackers' runs (metrics.jsonl itself needs no closing)."""
        self.trackers.finish()


def resume_training(cfg: TrainConfig, run_dir: Path, model, optimizer) -> int:
    """Load the newest complete checkpoint into model and optimizer (on every rank); return the step to continue
    from."""
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is None:
        return 0
    state = load_trainer_state(ckpt)
    if has_adapters(model):  # LoRA: the checkpoint holds the adapter; the frozen base is the run's input model
        load_adapter_checkpoint(model, ckpt)
    else:
        refuse_adapter_checkpoint(ckpt)
        # Read as from_pretrained reads the folder, not key by key from its safetensors: transformers 5 saves some
        # weights under their checkpoints' original names and renames them on load (GPT-NeoX's lm_head is saved as
        # embed_out), so the file's keys need not be the model's.
        weights = load_policy(str(ckpt), getattr(cfg, "trust_remote_code", False)).state_dict()
        missing, unexpected = distributed.load_weights(model, weights)
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        if unexpected or set(missing) - tied:  # tied embeddings are stored once; anything else is a mismatch
            raise TetherError(f"{ckpt}: checkpoint does not match the model (missing {missing}, "
                              f"unexpected {unexpected})")
    distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["step"])


def train_lm(cfg: TrainConfig, model, tokenizer, examples: list[Example], stage: str) -> Path:
    """Train `model` on `examples`; returns the folder of the final model (`out/model`). With cfg.lora, peft
    adapts `model` in place (its linear layers gain adapters)."""
    # 1. Device (and the process group under torchrun), run folder, seeds, held-out split, data order.
    device = distributed.setup(cfg)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    train, held_out = split_eval(examples, cfg.eval_fraction, cfg.seed)
    check(len(train) >= cfg.batch_size, "batch_size", f"larger than the {len(train)} training examples")
    lengths = [len(e.input_ids) for e in train]
    steps = total_steps(cfg, len(train))
    per_epoch = len(train) // cfg.batch_size
    # 2. LoRA; the model on the device (bf16, gradient checkpointing) and wrapped for the ranks (DDP: `net` is a
    #    wrapper; FSDP2: the model, sharded); optimizer (trainable weights only); resume restores weights,
    #    optimizer moments and RNG.
    model = distributed.prepare(adapt(model, cfg), cfg, device)
    net = distributed.wrap(model, cfg.strategy)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2))
    start = resume_training(cfg, run_dir, model, optimizer)
    log = MetricsLog(run_dir / "metrics.jsonl", start, cfg)
    guard = NonFiniteGuard.from_config(cfg, start)
    model.train()
    pad_id = tokenizer.pad_token_id
    epoch, batches = -1, []
    started, tokens_seen = time.perf_counter(), 0
    with progress_bar(f"{stage}", total=steps, completed=start) as bar:
        for step in range(start, steps):
            # 3. The step's batch is a pure function of (seed, step): nothing else to restore.
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                batches = epoch_batches(lengths, cfg.batch_size, cfg.bucket_size, cfg.seed, epoch)
            batch = [train[i] for i in batches[step % per_epoch]]
            # 4. Forward, backward (accumulated), clip, step at the scheduled learning rate.
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, steps, cfg.min_lr_ratio)
            row = {"step": step + 1, "epoch": step / per_epoch,
                   **train_step(net, optimizer, batch, cfg, pad_id, lr, guard)}
            tokens_seen += row["tokens"]
            row["tokens_per_s"] = tokens_seen / (time.perf_counter() - started)
            # 5. Eval loss, metrics, checkpoints.
            last = step + 1 == steps
            if held_out and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
                row["eval_loss"] = eval_loss(model, held_out, pad_id, cfg.micro_batch_size)
            if (step + 1) % cfg.log_every == 0 or "eval_loss" in row or last:
                log.write(row)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and not last:
                state = {"step": step + 1, "optimizer": distributed.optimizer_state(model, optimizer),
                         "rng": rng_state()}
                distributed.on_main(model, lambda plain: save_checkpoint(run_dir, step + 1, plain, tokenizer, state,
                                                                         keep=cfg.keep_checkpoints))
            bar.update(1, loss=row["loss"])
    log.close()
    # 6. The final model as a plain Hugging Face folder (rank 0), refused if non-finite (tether.guard).
    final = run_dir / "model"
    distributed.on_main(model, lambda plain: save_pretrained(plain, tokenizer, str(final)))
    distributed.barrier()  # every rank returns once the model is on disk
    return final

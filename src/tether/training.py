"""What every training stage shares: the optimisation settings (`TrainConfig`), training examples and their
batches (length-bucketed per epoch, right-padded), metrics.jsonl, resuming from a checkpoint, and `due`, the
cadence of evaluations, metric lines and checkpoints.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tether import distributed, tracking
from tether.chat_templates import check_template_setting
from tether.checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from tether.config import check
from tether.distributed import DistributedConfig
from tether.errors import TetherError
from tether.guard import NONFINITE_POLICIES
from tether.lora import LoraOptions, has_adapters, load_adapter_checkpoint, refuse_adapter_checkpoint
from tether.math.losses import shift_labels
from tether.models import load_policy


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
    response_only_head: bool = True
    """Run the LM head and log-softmax only at the positions whose next token is trained (the responses in SFT and
    DPO), in chunks, never over the whole (B, T, V) logits, and the last decoder layer's feed-forward block only
    there too (tether.logprobs, tether.last_layer; tested equal to the full pass, and used only on architectures
    checked to compute logits as lm_head(hidden), in one process). false: the model's own logits."""
    torch_compile: bool = False
    """Compile every decoder layer with torch.compile (inductor; `tether.distributed.compile_layers`): the layers
    share one graph, which fuses the work between the matmuls, in passes without a KV cache (rm's and dpo's shared
    prompts too, laid in rows under sdpa or eager attention; evaluations and sampling run uncompiled). The first
    steps are slower while it compiles (seconds to a minute), and it is not always faster once compiled: on a CPU,
    SFT of a 30M model on short conversations ran at 310 tokens/s compiled against 378 eager (README, "Both sides
    compiled"); measure on your shapes. Not with strategy=fsdp2 or gradient_checkpointing."""
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
              "micro_batch_size", f"{self.micro_batch_size} must divide batch_size ({self.batch_size}): set "
              f"micro_batch_size={self.batch_size} or a divisor of it (the micro-batch is what one forward pass holds)")
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
        check(not (self.torch_compile and self.strategy == "fsdp2"), "torch_compile",
              "not with strategy=fsdp2 (untested: its per-layer hooks around compiled layers); use strategy=ddp or "
              "torch_compile=false")
        check(not (self.torch_compile and self.gradient_checkpointing), "torch_compile",
              "not with gradient_checkpointing=true (tether's checkpointed layers would run uncompiled); choose one")
        # LoRA under FSDP2 trains and saves, but resuming loads the adapter and a reward head with load_state_dict
        # into the sharded weights, which fails (the head) or leans on peft internals (the adapter): refused.
        check(not (self.lora.enabled and self.strategy == "fsdp2"), "strategy",
              "fsdp2 does not combine with LoRA (lora.r > 0): a LoRA checkpoint resumes into whole weights only; use "
              "strategy=ddp (only the adapters' gradients are all-reduced), or lora.r=0 to shard a full fine-tuning")


def compile_model(cfg: TrainConfig, model):
    """`model`, its decoder layers compiled in place when cfg.torch_compile asks (`distributed.compile_layers`)."""
    if cfg.torch_compile:
        from tether.progress import console

        layers = distributed.compile_layers(model)
        check(layers > 0, "torch_compile",
              f"{type(model).__name__} has no decoder layers that tether knows how to compile (transformers' "
              f"GradientCheckpointingLayer); set torch_compile=false")
        console.print(f"torch_compile: {layers} decoder layers compile at their first pass (the first steps are "
                      f"slower)")
    return model


def due(step: int, every: int, last: bool = False) -> bool:
    """Whether a periodic action (an evaluation, a metric line, a checkpoint) runs once `step` steps are done:
    every `every` steps (0: never), and always at the `last` step."""
    return bool(every and step % every == 0) or last


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


class BatchPlan:
    """The batches of a run: step -> the indices of its examples, from `epoch_batches` of the step's epoch (kept
    while the epoch lasts). A pure function of (seed, step), so resuming needs only the step."""

    def __init__(self, lengths: list[int], batch_size: int, bucket_size: int, seed: int):
        self.lengths, self.batch_size, self.bucket_size, self.seed = lengths, batch_size, bucket_size, seed
        self.per_epoch = len(lengths) // batch_size
        self.epoch, self.batches = -1, []

    def __call__(self, step: int) -> list[int]:
        if step // self.per_epoch != self.epoch:
            self.epoch = step // self.per_epoch
            self.batches = epoch_batches(self.lengths, self.batch_size, self.bucket_size, self.seed, self.epoch)
        return self.batches[step % self.per_epoch]


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


def checkpoint_to_resume(cfg, run_dir: Path) -> Path | None:
    """With cfg.resume, the newest complete checkpoint of the run, said aloud (which step, or that none was found and
    the run starts at step 0)."""
    if not cfg.resume:
        return None
    ckpt = latest_checkpoint(run_dir)
    if distributed.is_main():
        from tether.progress import console

        console.print(f"resume: from {ckpt} (step {load_trainer_state(ckpt)['step']})" if ckpt is not None else
                      f"resume: no complete checkpoint in {run_dir / 'checkpoints'}; starting at step 0",
                      markup=False, highlight=False, soft_wrap=True)
    return ckpt


def resume_training(cfg: TrainConfig, run_dir: Path, model, optimizer) -> int:
    """Load the newest complete checkpoint into model and optimizer (on every rank); return the step to continue
    from."""
    ckpt = checkpoint_to_resume(cfg, run_dir)
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
    saved = len(state["optimizer"].get("param_groups", optimizer.param_groups))
    if saved != len(optimizer.param_groups):
        raise TetherError(f"{ckpt}: the checkpoint's optimizer has {saved} parameter groups and this run's "
                          f"{len(optimizer.param_groups)}: a setting that splits them (PPO's value_lr) changed since "
                          f"the run started; resume with the settings of {run_dir / 'config.yaml'}")
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    for group, scale in zip(optimizer.param_groups, scales):  # the run's settings (value_lr), not the checkpoint's
        group["lr_scale"] = scale
    set_rng_state(state["rng"])
    return int(state["step"])


def save_training_state(run_dir: Path, step: int, model, optimizer, tokenizer, keep: int, **extra) -> None:
    """A checkpoint at `step`: the weights (rank 0 writes them; under FSDP2 every rank helps gather them), the
    optimizer moments, the RNG states, and `extra` (e.g. the monitor's state) in trainer_state.pt."""
    state = {"step": step, "optimizer": distributed.optimizer_state(model, optimizer), "rng": rng_state(), **extra}
    distributed.on_main(model, lambda plain: save_checkpoint(run_dir, step, plain, tokenizer, state, keep=keep))

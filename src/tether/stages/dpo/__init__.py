"""`tether dpo`: preference optimisation of a policy against a frozen reference π_ref, with no reward model.

One loop (`train_preferences`) for two variants, each a module with the same names: `pairs`, the DPO family on
labelled comparisons (sigmoid, ipo, cdpo, robust, simpo), and `unpaired`, KTO on thumbs-up/down rows (loss=kto).
π_ref's log-probs are computed once before training and cached (`sequences`); with LoRA π_ref is the policy with
its adapters disabled. The policy stays in eval mode (no dropout, as in TRL), so policy and reference agree on
identical weights. Evaluations add the held-out metrics, the sampled KL(π || π_ref) (kl_eval_prompts) and the
reward-hacking monitor, which scores samples with the implicit reward β log π/π_ref.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console

from tether import distributed
from tether.chat import ChatFormat, chat_format
from tether.config import save_config
from tether.generation import generate
from tether.guard import NonFiniteGuard
from tether.logprobs import FastPaths, forward_token_logps
from tether.lora import adapt, adapters_disabled, frozen_reference
from tether.math.dpo_losses import REFERENCE_FREE, UNPAIRED_LOSSES
from tether.math.kl import kl_k1, kl_k3
from tether.math.losses import IGNORE_INDEX
from tether.models import check_positions, load_policy, load_tokenizer, save_pretrained
from tether.optim import adamw, lr_at
from tether.progress import progress_bar
from tether.stages.dpo import pairs, unpaired
from tether.stages.dpo.config import DPOConfig
from tether.stages.dpo.sequences import CACHE, encode_responses, example, fast_paths
from tether.stages.monitoring import RunMonitor, answer_greedy, make_samples, open_monitor, pushback_flips
from tether.training import (
    BatchPlan,
    MetricsLog,
    collate,
    compile_model,
    due,
    resume_training,
    save_training_state,
    total_steps,
)

__all__ = ["DPOConfig", "run"]
console = Console(stderr=True)


class Variant(Protocol):
    """What the loop reads from a variant: the modules `pairs` (the DPO family) and `unpaired` (KTO) both have it."""

    NAME: str
    """Progress-bar label and console prefix."""
    BAR: tuple[str, str]
    """The metric shown beside the loss on the progress bar, and its short name there."""

    def read(self, cfg: DPOConfig) -> tuple: ...  # the data, read and validated before any model work
    def load(self, cfg: DPOConfig, fmt: ChatFormat, *data) -> tuple[list, list, list, dict]: ...  # all, train, held out
    def summary(self, report: dict) -> str: ...
    def length(self, item) -> int: ...  # what the batches are bucketed by
    def reference_logps(self, ref_model, items: list, pad_id: int, batch_size: int, cache: Path,
                        fast: FastPaths = ...) -> bool: ...
    def train_step(self, model, optimizer, batch: list, cfg: DPOConfig, pad_id: int, lr: float,
                   guard: NonFiniteGuard | None = None) -> dict: ...
    def evaluate(self, model, held_out: list, cfg: DPOConfig, pad_id: int) -> dict: ...  # eval_... metrics


def run(cfg: DPOConfig) -> Path:
    """Train the policy with cfg.loss; returns the folder of the final model (`out/model`)."""
    variant = unpaired if cfg.loss in UNPAIRED_LOSSES else pairs
    # 1. Data read and validated before any model work, encoded, split by prompt (KTO: paired for z_ref).
    data = variant.read(cfg)
    fmt = chat_format(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.chat_template, cfg.model)
    items, train, held_out, report = variant.load(cfg, fmt, *data)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "data_report.json").write_text(json.dumps(report, indent=1))
    console.print(f"{variant.NAME}: {variant.summary(report)}")
    # 2. Policy (on the device) and reference. π_ref's log-probs are computed once (or read from the cache)
    #    before training and before resuming, while `model` still holds the initial weights.
    torch.manual_seed(cfg.seed)
    model = adapt(load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg)  # LoRA
    check_positions(model, cfg.max_length, "max_length")
    model = distributed.prepare(model, cfg, distributed.setup(cfg))  # device, bf16, gradient checkpointing
    model.eval()  # no dropout: policy and reference log-probs agree on identical weights
    cache = run_dir / CACHE
    kl_ref = prepare_reference(cfg, model, lambda ref: variant.reference_logps(ref, items, fmt.pad_id,
                                                                               cfg.micro_batch_size, cache,
                                                                               fast_paths(cfg)),
                               cache, variant.NAME)
    return train_preferences(cfg, variant, run_dir, model, fmt, train, held_out, kl_ref)


def prepare_reference(cfg: DPOConfig, model, fill, cache: Path, name: str):
    """π_ref (cfg.ref_model on the device, else the initial policy: with LoRA its adapters disabled); `fill(ref)`
    sets the items' reference log-probs (cached; True on a cache hit) while `model` holds its initial weights.
    Returns the frozen reference the sampled KL and the monitor need (None when neither runs)."""
    ref_model = distributed.prepare(load_policy(cfg.ref_model, trust_remote_code=cfg.trust_remote_code), cfg,
                                    next(model.parameters()).device) if cfg.ref_model else adapters_disabled(model)
    if cfg.loss not in REFERENCE_FREE:
        hit = fill(ref_model)
        console.print(f"{name}: reference log-probs {'read from' if hit else 'computed and saved to'} {cache}")
    if not cfg.kl_eval_prompts and not cfg.monitor.enabled:
        return None  # a separate reference model is freed here
    return ref_model.requires_grad_(False) if cfg.ref_model else frozen_reference(model)


def distinct_prompts(items: list) -> list:
    """The prompts of `items` (pairs or rows), each once, in order."""
    return list({x.prompt_key: x.prompt for x in items}.values())


def train_preferences(cfg: DPOConfig, variant: Variant, run_dir: Path, model, fmt: ChatFormat, train: list,
                      held_out: list, kl_ref) -> Path:
    """The training loop of both variants over their encoded items; returns the folder of the final model."""
    pad_id, tokenizer, (bar_metric, bar_label) = fmt.pad_id, fmt.tokenizer, variant.BAR
    # 3. Wrapped for the ranks (DDP: `net` is a wrapper; FSDP2: the model, sharded); optimizer; resume restores
    #    weights, optimizer moments and RNG.
    compile_model(cfg, model)  # after the reference's copy and its log-probs: those stay uncompiled
    net = distributed.wrap(model, cfg.strategy)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2))
    start = resume_training(cfg, run_dir, model, optimizer)
    log, guard = MetricsLog(run_dir / "metrics.jsonl", start, cfg), NonFiniteGuard.from_config(cfg, start)
    monitor = open_monitor(cfg.monitor, run_dir, start, cfg.trust_remote_code)
    steps, per_epoch = total_steps(cfg, len(train)), len(train) // cfg.batch_size
    plan = BatchPlan([variant.length(x) for x in train], cfg.batch_size, cfg.bucket_size, cfg.seed)
    started, tokens_seen = time.perf_counter(), 0
    with progress_bar(variant.NAME, total=steps, completed=start) as bar:
        for step in range(start, steps):
            # 4. The step's items are a pure function of (seed, step): nothing else to restore.
            batch = [train[i] for i in plan(step)]
            # 5. Forward per micro-batch, losses, accumulate, clip, step (pairs: chosen + rejected in one forward;
            #    KTO: z_ref of the whole batch first).
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, steps, cfg.min_lr_ratio)
            row = {"step": step + 1, "epoch": step / per_epoch,
                   **variant.train_step(net, optimizer, batch, cfg, pad_id, lr, guard)}
            tokens_seen += row["tokens"]
            row["tokens_per_s"] = tokens_seen / (time.perf_counter() - started)
            # 6. Held-out metrics (every rank), the sampled KL and the monitor (rank 0); an alert with stop_on_alert
            #    ends the run.
            last = step + 1 == steps
            with distributed.eager():
                stop = due(step + 1, cfg.eval_every, last) and evaluate_step(cfg, variant, model, kl_ref, fmt,
                                                                              monitor, train, held_out, step, row)
            # 7. Metric lines, checkpoints (with the monitor's state).
            if due(step + 1, cfg.log_every, last) or "eval_loss" in row or "monitor/alerts" in row:
                log.write(row)
            if stop:
                break
            if due(step + 1, cfg.save_every) and not last:
                save_training_state(run_dir, step + 1, model, optimizer, tokenizer, cfg.keep_checkpoints,
                                    monitor=monitor.state_dict() if monitor is not None else {})
            bar.update(1, loss=row["loss"], **{bar_label: row[bar_metric]})
    log.close()
    # 8. The final model as a plain Hugging Face folder (rank 0).
    final = run_dir / "model"
    distributed.on_main(model, lambda plain: save_pretrained(plain, tokenizer, str(final)))
    distributed.barrier()  # every rank returns once the model is on disk
    return final


def evaluate_step(cfg: DPOConfig, variant: Variant, model, kl_ref, fmt: ChatFormat, monitor: RunMonitor | None,
                  train: list, held_out: list, step: int, row: dict) -> bool:
    """An evaluation after `step`: the held-out metrics, the sampled KL and the monitor's into `row`; returns
    whether to stop (the same on every rank)."""
    if held_out:
        row.update(variant.evaluate(model, held_out, cfg, fmt.pad_id))
        if cfg.kl_eval_prompts and distributed.is_main():
            row.update(sampled_kl(model, kl_ref, fmt, distinct_prompts(held_out)[:cfg.kl_eval_prompts], cfg,
                                  seed=cfg.seed + step))
    stop = False
    if monitor is not None:
        prompts = distinct_prompts(held_out or train)[:cfg.monitor.samples]
        monitored, stop = monitor_step(monitor, model, kl_ref, fmt, prompts, cfg, step + 1)
        row.update({k: v for k, v in monitored.items() if v is not None})  # rows hold numbers only
    return distributed.broadcast_flag(stop)


@torch.no_grad()
def sampling_prompt_limit(cfg: DPOConfig, max_new_tokens: int) -> int:
    """Longest prompt sampled from: max_prompt_length, and at most max_length - max_new_tokens, so that a prompt and
    its sample fit the length the stage trains on (as its pairs do), whatever the data's longest prompt."""
    room = max(1, cfg.max_length - max_new_tokens)
    return room if cfg.max_prompt_length is None else min(cfg.max_prompt_length, room)


def sample_logratios(model, ref_model, fmt: ChatFormat, prompts: list, max_new_tokens: int, cfg: DPOConfig, seed: int,
                     field: str) -> tuple[list[str], list[float], list[float], list[int]]:
    """Responses sampled from π at temperature 1 (prompts cut to `sampling_prompt_limit`; `field` names
    max_new_tokens' setting), and per response Σ_t k1, Σ_t k3 of log π - log π_ref over its tokens (its end-of-turn
    token included) and the token count. Σ_t k1 is log π(y|x)/π_ref(y|x), so β Σ_t k1 is DPO's implicit reward of
    the sample. The samples are decoded and re-encoded, so the scored tokens can differ slightly from the sampled
    ones, and the closing end-of-turn token is scored even when a sample was cut."""
    limit = sampling_prompt_limit(cfg, max_new_tokens)
    with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG (resume equality)
        texts = generate(model, fmt, prompts, max_new_tokens, 1.0, cfg.micro_batch_size, seed, label="dpo kl",
                         max_prompt_length=limit, field=field)
    samples = [example(e) for e in encode_responses(fmt, prompts, texts, cfg.max_length, limit)]
    k1, k3, n = [], [], []
    for i in range(0, len(samples), cfg.micro_batch_size):
        batch = {k: v.to(model.device) for k, v in collate(samples[i:i + cfg.micro_batch_size],
                                                           fmt.pad_id).items()}
        inputs = (batch["input_ids"], batch["attention_mask"], batch["labels"], cfg.response_only_head)
        logp = forward_token_logps(model, *inputs)  # (B, T)
        ref_logp = forward_token_logps(ref_model, *inputs)  # (B, T)
        counted = batch["labels"] != IGNORE_INDEX  # (B, T)
        k1 += torch.where(counted, kl_k1(logp, ref_logp), 0).sum(1).tolist()  # (B,)
        k3 += torch.where(counted, kl_k3(logp, ref_logp), 0).sum(1).tolist()  # (B,)
        n += counted.sum(1).tolist()
    return texts, k1, k3, n


def sampled_kl(model, ref_model, fmt: ChatFormat, prompts: list, cfg: DPOConfig, seed: int) -> dict:
    """Per-token k1 and k3 estimates of KL(π || π_ref) (Schulman's, `tether.math.kl`) on responses sampled from π
    at temperature 1: on-policy, unlike eval_logratio/chosen; k1 is noisy and can be negative on few tokens."""
    _, k1, k3, n = sample_logratios(model, ref_model, fmt, prompts, cfg.kl_eval_max_new_tokens, cfg, seed,
                                    "kl_eval_max_new_tokens")
    return {"eval_kl/k1": sum(k1) / sum(n), "eval_kl/k3": sum(k3) / sum(n), "eval_kl/tokens": sum(n)}


def monitor_step(monitor: RunMonitor, model, ref_model, fmt: ChatFormat, prompts: list, cfg: DPOConfig, step: int
                 ) -> tuple[dict, bool]:
    """The monitor at an evaluation: sampled held-out responses with their implicit rewards, tokens, KL and
    held-out scores; the flip probe; out/best at a new best of the samples' mean held-out score."""
    m = cfg.monitor
    texts, k1, _, n = sample_logratios(model, ref_model, fmt, prompts, m.max_new_tokens, cfg, cfg.seed + step,
                                       "monitor.max_new_tokens")
    scores = None if cfg.loss in REFERENCE_FREE else [cfg.beta * x for x in k1]
    heldout = monitor.score_heldout(prompts, texts)
    samples = make_samples(prompts, texts, scores, [t - 1 for t in n], [t - 1 < m.max_new_tokens for t in n],
                           heldout, monitor.world)  # t - 1: the end-of-turn token is scored even after a cut sample
    extra = {"kl": sum(k1) / len(k1)}
    if m.pushback_prompts:
        answer = answer_greedy(model, fmt, m.max_new_tokens, cfg.micro_batch_size,
                               sampling_prompt_limit(cfg, m.max_new_tokens))
        extra.update(flip=pushback_flips(answer, prompts[:m.pushback_prompts], m.pushback),
                     flip_n=len(prompts[:m.pushback_prompts]))
    known = [h for h in heldout if h is not None]
    best = sum(known) / len(known) if known else None
    return monitor.step(step, samples, extra, best, lambda path: save_pretrained(model, fmt.tokenizer, str(path)))

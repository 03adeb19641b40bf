"""`tether dpo`: direct preference optimisation of a policy on labelled comparisons, with no reward model.

DPO (Rafailov et al. 2023) and its family (`tether.math.dpo_losses.DPO_LOSSES`: sigmoid, ipo, cdpo, robust,
simpo) train the policy directly on pairs (x, y_chosen, y_rejected) against a frozen reference π_ref.
`loss=kto` trains KTO on unpaired thumbs-up/down rows instead (or comparisons split into such rows, ties
dropped and counted): another data shape and step, in `tether.stages.kto`, which this module's `run` enters.

Data. Comparisons in any format of tether.data.formats, one row per rating; an unlabelled row is an error naming
its place. Ties are dropped and counted, except for IPO (`TIE_AWARE`). Each pair is prompt + chosen and prompt +
rejected in the model's chat format (tether.chat): only the final response and its end-of-turn token count; the
prompt is cut to fit the longer response; a pair whose response alone does not fit is dropped; both counted.

Reference. π_ref's log-probs of every sequence are computed once, before training, in one no-grad pass,
and cached in `out/ref_logps.safetensors` under a sha256 of the reference weights and of every scored
token sequence: a changed dataset, tokenizer, max_length or reference recomputes it; resuming reuses it.
Reference-free losses (SimPO) skip the pass. With LoRA (lora.r > 0) π_ref is the policy with its adapters
disabled (tether.lora), keyed by the plain base weights, never a second model in memory.

Training. Each micro-batch puts its pairs' chosen and rejected sequences in ONE forward pass (2M rows);
the summed per-pair losses are divided by the pairs of the whole step (exact gradient accumulation).
Batches are length-bucketed (`lm.epoch_batches`), a pure function of (seed, step), so resuming needs only
the step. The policy stays in eval mode: dropout would make policy and reference log-probs differ on
identical weights (TRL disables dropout for the same reason); gradients flow as usual.

Metrics, under TRL's names: loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies
(implicit rewards β(log π - log π_ref), per token for length-normalised losses; accuracy = share of pairs
whose chosen reward is higher, ties excluded), logps/chosen, logps/rejected (summed log-probs: a falling
chosen log-prob while the margin grows is a known DPO failure). At eval time the same on held-out prompts,
prefixed `eval_`, plus:
- eval_logratio/chosen: mean over tokens of log π - log π_ref on the held-out *chosen responses*. It shows
  how far the policy moved on the data, but it is NOT a KL: the responses are not samples from π, and it
  can be negative.
- eval_kl/k1, eval_kl/k3 (when kl_eval_prompts > 0): per-token estimates of KL(π || π_ref) (Schulman's
  k1, k3, `tether.math.kl`) on responses *sampled from π* at temperature 1 for that many held-out prompts, scored
  by a plain forward of policy and reference. Only these are on-policy. Caveats: the samples are decoded
  and re-encoded, so the scored tokens can differ slightly from the sampled ones, and the closing end-of-turn token is
  scored even when a sample was cut at kl_eval_max_new_tokens; k1 is noisy and can be negative on few tokens.

Monitor. At each evaluation `monitor` (tether.monitor) samples monitor.samples held-out prompts at temperature 1,
scores each response with DPO's implicit reward β log π(y|x)/π_ref(y|x) (the proxy DPO optimises; None for
reference-free losses) and a held-out signal (monitor.heldout: the gold audit with monitor.world, or a second
reward model), and logs monitor/... metrics, alerts.jsonl, out/best, and with stop_on_alert ends the run.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console

from tether import distributed
from tether.chat import ChatFormat, Encoded, chat_format
from tether.checkpoint import cached_tensors, rng_state, save_checkpoint
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_comparisons
from tether.data.preferences import (
    Comparison,
    prompt_key,
    split_by_prompt,
)
from tether.math.dpo_losses import (
    DPO_LOSSES,
    LENGTH_NORMALISED,
    REFERENCE_FREE,
    TIE_AWARE,
    UNPAIRED_LOSSES,
    implicit_rewards,
    loss_keywords,
    sequence_logps,
    token_logps,
)
from tether.generation import generate
from tether.errors import naming
from tether.guard import NonFiniteGuard
from tether.math.kl import kl_k1, kl_k3
from tether.lora import adapt, adapters_disabled, frozen_reference
from tether.math.losses import IGNORE_INDEX
from tether.models import check_positions, load_policy, load_tokenizer, save_pretrained
from tether.monitor import MonitorConfig
from tether.optim import adamw, lr_at
from tether.progress import progress_bar
from tether.training import (
    Example,
    MetricsLog,
    TrainConfig,
    collate,
    epoch_batches,
    resume_training,
    total_steps,
)
from tether.stages.monitoring import RunMonitor, answer_greedy, make_samples, open_monitor, pushback_flips

console = Console(stderr=True)
CACHE = "ref_logps.safetensors"


@dataclass
class DPOConfig(TrainConfig):
    """Direct preference optimisation of a causal LM on tether preference JSONL, against a frozen reference."""

    data: str = "runs/collect/preferences.jsonl"
    """tether preference JSONL, every row labelled ("A", "B" or "tie"; null is an error). One row per rating:
    several ratings of one pair are separate rows and each counts. loss=kto also reads TRL unpaired rows
    {"prompt", "completion", "label": true|false} (tether.data.unpaired). Also TRL, HH-RLHF or UltraFeedback
    preference data (tether.data.formats); JSONL, Parquet, Arrow or a save_to_disk folder."""
    format: str = "auto"
    """Format of data: auto (told from the first row's keys) or a name from `tether data --help`:
    tether, trl, hh, ultrafeedback_binarized, ultrafeedback; loss=kto also trl_unpaired."""
    split: str | None = None
    """Split of data when it is a `datasets` save_to_disk DatasetDict folder (e.g. train_prefs);
    None for a file."""
    model: str = "runs/sft/model"
    """HF folder of the policy's initial weights, with its tokenizer; also the reference unless ref_model is set."""
    ref_model: str | None = None
    """Another HF folder as the frozen reference π_ref (same tokenizer as model); None: the initial policy."""
    loss: Literal["sigmoid", "ipo", "cdpo", "robust", "simpo", "kto"] = "sigmoid"
    """A key of tether.math.dpo_losses.DPO_LOSSES: sigmoid (DPO), ipo, cdpo, robust (rDPO) or simpo; or kto
    (UNPAIRED_LOSSES: unpaired rows, tether.stages.kto). Ties are kept by ipo only."""
    beta: float = 0.1
    """β: how tightly the policy is tethered to the reference (IPO's τ); SimPO's reward scale (use ~2)."""
    label_smoothing: float = 0.0
    """ε, the assumed rate of flipped labels, for cdpo and robust; in [0, 0.5)."""
    simpo_gamma: float = 0.5
    """SimPO's target margin γ on β x (mean log-prob of chosen - of rejected)."""
    desirable_weight: float = 1.0
    """KTO's λ_D, the weight of desirable rows (the paper: λ_D n_D / (λ_U n_U) in [1, 4/3])."""
    undesirable_weight: float = 1.0
    """KTO's λ_U, the weight of undesirable rows."""
    max_length: int = 256
    """Longest prompt + response in tokens (module docstring, "Data": what is cut and what dropped)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens, cut the same way (None: only max_length limits it)."""
    trust_remote_code: bool = False
    """Allow the model folders' own Python code to run (only for models you trust)."""
    out: str = "runs/dpo"
    """Run folder: metrics.jsonl, config.yaml, data_report.json, ref_logps.safetensors, checkpoints/, model/."""
    batch_size: int = 32
    """Pairs per optimizer step (each is two sequences); rows (one sequence each) for kto."""
    micro_batch_size: int = 32
    """Pairs per forward pass (2 x this many sequences); batch_size / micro_batch_size is the accumulation."""
    lr: float = 1e-4
    """Peak learning rate of AdamW (DPO wants far less than SFT)."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    eval_fraction: float = 0.1
    """Share of the prompts held out, split by prompt: no prompt is on both sides."""
    eval_every: int = 50
    """Steps between held-out evaluations (0: only at the end)."""
    kl_eval_prompts: int = 0
    """Held-out prompts sampled from the policy at each evaluation for the KL(π || π_ref) estimate (0: off)."""
    kl_eval_max_new_tokens: int = 64
    """Longest sampled response of the KL estimate, in tokens."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """The reward-hacking monitor (tether.monitor), run at each evaluation on sampled held-out responses; gold (with
    monitor.world) is an audit signal only, never trained on."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.data), "data", "is required")
        check(bool(self.model), "model", "is required")
        check(self.loss in {**DPO_LOSSES, **UNPAIRED_LOSSES}, "loss",
              f"must be one of {', '.join({**DPO_LOSSES, **UNPAIRED_LOSSES})}")
        check_format(self.format, "unpaired" if self.loss in UNPAIRED_LOSSES else "comparisons")
        check(self.desirable_weight > 0, "desirable_weight", "must be > 0")
        check(self.undesirable_weight > 0, "undesirable_weight", "must be > 0")
        check(self.beta > 0, "beta", "must be > 0")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        check(self.kl_eval_prompts >= 0, "kl_eval_prompts", "must be >= 0")
        check(self.kl_eval_prompts == 0 or self.eval_fraction > 0, "kl_eval_prompts",
              "needs held-out prompts (eval_fraction > 0)")
        check(self.kl_eval_max_new_tokens > 0, "kl_eval_max_new_tokens", "must be > 0")
        check_prompt_limit(self.max_prompt_length)
        check(self.strategy != "fsdp2" or not (self.kl_eval_prompts or self.monitor.enabled), "strategy",
              "fsdp2 cannot sample on rank 0 alone: set kl_eval_prompts=0 and monitor.enabled=false, or use ddp")


@dataclass
class Pair:
    """One comparison encoded for DPO."""

    prompt: str | list
    """The prompt as in the data (a user message or a conversation ending with a user turn)."""
    prompt_key: str
    """The prompt as canonical JSON: the unit of the held-out split."""
    chosen: Example
    """prompt + chosen response; loss_mask is 1 on the response's tokens and its end-of-turn token only."""
    rejected: Example
    """prompt + rejected response, masked the same way."""
    tie: bool
    """A tie (kept only for TIE_AWARE losses); chosen and rejected are then responses A and B."""
    ref_chosen: float = 0.0
    """log π_ref(chosen | prompt), summed over the response tokens (0 for reference-free losses)."""
    ref_rejected: float = 0.0
    """log π_ref(rejected | prompt)."""


@dataclass
class PairBatch:
    """What the losses and metrics read for M pairs. Log-probs are summed over response tokens."""

    policy_chosen: torch.Tensor
    """(M,) log π(chosen), with grad when the forward had it."""
    policy_rejected: torch.Tensor
    """(M,) log π(rejected)."""
    ref_chosen: torch.Tensor
    """(M,) log π_ref(chosen), from the pairs' cached values."""
    ref_rejected: torch.Tensor
    """(M,) log π_ref(rejected)."""
    chosen_len: torch.Tensor
    """(M,) float, response tokens counted in policy_chosen (content and end-of-turn token)."""
    rejected_len: torch.Tensor
    """(M,) float, response tokens counted in policy_rejected."""
    tie: torch.Tensor
    """(M,) bool."""
    tokens: int
    """Non-padding tokens in the forward pass (prompts included)."""


# ---------------------------------------------------------------------------------------------
# Data: read, validate, encode


def encode_responses(fmt: ChatFormat, prompts: list, responses: list[str], max_length: int,
                     max_prompt_length: int | None = None) -> list[Encoded]:
    """prompt + response of each row (tether.chat), the mask on the response and its end-of-turn token only."""
    return fmt.encode_many(list(zip(prompts, responses)), max_length, max_prompt_length)


def example(e: Encoded) -> Example:
    return Example(e.input_ids, e.loss_mask)  # the ids and mask a training step reads


def encode_comparisons(fmt: ChatFormat, comparisons: list[Comparison], cfg: DPOConfig) -> tuple[list[Pair], dict]:
    """Pairs in data order, and a report of what was cut or dropped."""
    ties = sum(c.choice == "tie" for c in comparisons)
    kept = [c for c in comparisons if c.choice != "tie" or cfg.loss in TIE_AWARE]
    rows = [(c.prompt, c.chosen, c.rejected) if c.choice != "tie" else (c.prompt, c.response_a, c.response_b)
            for c in kept]
    pairs, truncated, too_long = [], 0, 0
    for c, (chosen, rejected) in zip(kept, fmt.encode_pairs(rows, cfg.max_length, cfg.max_prompt_length)):
        if chosen.response_cut or rejected.response_cut:
            too_long += 1
            continue
        truncated += chosen.truncated
        pairs.append(Pair(c.prompt, prompt_key(c.prompt), example(chosen), example(rejected), c.choice == "tie"))
    report = {"rows": len(comparisons), "ties": ties, "ties_dropped": len(comparisons) - len(kept),
              "truncated_pairs": truncated, "dropped_response_too_long": too_long, "pairs": len(pairs),
              "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length, "chat_template": fmt.name}
    return pairs, report


# ---------------------------------------------------------------------------------------------
# Log-probs, losses, metrics


def forward_pairs(model, pairs: list[Pair], pad_id: int) -> PairBatch:
    """Chosen and rejected of every pair in ONE forward pass: rows 0..M-1 chosen, M..2M-1 rejected."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)  # each (2M, T)
    device = distributed.device_of(model)  # `model` may be a DDP wrapper, or LoRA's base view
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    logps, counts = sequence_logps(logits, batch["labels"].to(device))  # (2M,), (2M,)
    m = len(pairs)
    floats = lambda xs: torch.tensor(xs, dtype=torch.float32, device=device)  # noqa: E731
    return PairBatch(logps[:m], logps[m:], floats([p.ref_chosen for p in pairs]),
                     floats([p.ref_rejected for p in pairs]), counts[:m].float(), counts[m:].float(),
                     torch.tensor([p.tie for p in pairs], device=device), int(batch["attention_mask"].sum()))


def pair_losses(b: PairBatch, cfg: DPOConfig) -> torch.Tensor:
    """The per-pair losses (M,) of cfg.loss, given the settings it reads (`loss_keywords`)."""
    available = dict(beta=cfg.beta, label_smoothing=cfg.label_smoothing, gamma=cfg.simpo_gamma,
                     chosen_len=b.chosen_len, rejected_len=b.rejected_len, tie=b.tie)
    fn = DPO_LOSSES[cfg.loss]
    return fn(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected,
              **{k: available[k] for k in loss_keywords(fn)})


def pair_sums(b: PairBatch, losses: torch.Tensor, cfg: DPOConfig) -> dict[str, float]:
    """Sums of the logged quantities over a micro-batch (rewards and log-probs over its non-tie pairs)."""
    per_token = cfg.loss in LENGTH_NORMALISED
    pc, pr = b.policy_chosen.detach(), b.policy_rejected.detach()
    r_c = implicit_rewards(pc, b.ref_chosen, cfg.beta, b.chosen_len if per_token else None)  # (M,)
    r_r = implicit_rewards(pr, b.ref_rejected, cfg.beta, b.rejected_len if per_token else None)  # (M,)
    d = ~b.tie
    return {"loss": float(losses.detach().sum()), "rewards/chosen": float(r_c[d].sum()),
            "rewards/rejected": float(r_r[d].sum()), "rewards/margins": float((r_c - r_r)[d].sum()),
            "rewards/accuracies": float((r_c > r_r)[d].sum()), "logps/chosen": float(pc[d].sum()),
            "logps/rejected": float(pr[d].sum()), "logratio/chosen": float((pc - b.ref_chosen).sum()),
            "chosen_tokens": float(b.chosen_len.sum()), "pairs": len(d), "decided": int(d.sum()), "tokens": b.tokens}


def add_sums(total: dict, sums: dict) -> None:
    for key, value in sums.items():
        total[key] = total.get(key, 0) + value


def means(s: dict) -> dict:
    """Per-pair means of the sums (rewards and log-probs per non-tie pair)."""
    decided = max(s["decided"], 1)
    out = {"loss": s["loss"] / s["pairs"]}
    out.update({k: s[k] / decided for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                             "rewards/accuracies", "logps/chosen", "logps/rejected")})
    return out


def train_step(model, optimizer, pairs: list[Pair], cfg: DPOConfig, pad_id: int, lr: float,
               guard: NonFiniteGuard | None = None) -> dict:
    """One optimizer step over `pairs`, split into micro-batches of micro_batch_size pairs; `guard` (the run's,
    else a fresh one from cfg) skips or halts it on a non-finite loss or gradient.

    Each micro-batch's summed pair losses are divided by the pair count of the whole step, so the gradient
    equals that of one big batch however the step is split. Under torchrun each rank runs its share of the
    micro-batches (`distributed.shard`); the sums are all-reduced.
    """
    total: dict = {}
    share = distributed.shard([pairs[i:i + cfg.micro_batch_size] for i in range(0, len(pairs), cfg.micro_batch_size)])
    for i, (micro, real) in enumerate(share):
        with distributed.accumulating(model, last=i == len(share) - 1):
            b = forward_pairs(model, micro, pad_id)
            losses = pair_losses(b, cfg)  # (M,)
            distributed.normalised(losses.sum(), len(pairs), real).backward()
        sums = pair_sums(b, losses, cfg)
        add_sums(total, sums if real else dict.fromkeys(sums, 0))
    total = distributed.all_reduce_sum(total)
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, total["loss"] / len(pairs))
    return {**means(total), "grad_norm": grad_norm, "lr": lr, "pairs": len(pairs), "tokens": total["tokens"],
            "nonfinite_skips": skipped}


@torch.no_grad()
def evaluate(model, pairs: list[Pair], cfg: DPOConfig, pad_id: int) -> dict:
    """Held-out loss, rewards and log-probs (as in training), and the mean per-token log-ratio log π - log π_ref
    on the chosen responses (not a KL: see the module docstring)."""
    total: dict = {}
    for i in range(0, len(pairs), cfg.micro_batch_size):
        b = forward_pairs(model, pairs[i:i + cfg.micro_batch_size], pad_id)
        add_sums(total, pair_sums(b, pair_losses(b, cfg), cfg))
    out = {f"eval_{k}": v for k, v in means(total).items()}
    if cfg.loss not in REFERENCE_FREE:
        out["eval_logratio/chosen"] = total["logratio/chosen"] / total["chosen_tokens"]
    return out


@torch.no_grad()
def sample_logratios(model, ref_model, fmt: ChatFormat, prompts: list, max_new_tokens: int, cfg: DPOConfig, seed: int
                     ) -> tuple[list[str], list[float], list[float], list[int]]:
    """Responses sampled from π at temperature 1, and per response Σ_t k1, Σ_t k3 of log π - log π_ref over its
    tokens (its end-of-turn token included) and the token count. Σ_t k1 is log π(y|x)/π_ref(y|x), so β Σ_t k1 is DPO's implicit
    reward of the sample."""
    with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG (resume equality)
        texts = generate(model, fmt, prompts, max_new_tokens, 1.0, cfg.micro_batch_size, seed, label="dpo kl",
                         max_prompt_length=cfg.max_prompt_length)
    samples = [example(e) for e in encode_responses(fmt, prompts, texts, cfg.max_length, cfg.max_prompt_length)]
    k1, k3, n = [], [], []
    for i in range(0, len(samples), cfg.micro_batch_size):
        batch = {k: v.to(model.device) for k, v in collate(samples[i:i + cfg.micro_batch_size],
                                                           fmt.pad_id).items()}
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logp = token_logps(model(**inputs).logits, batch["labels"])  # (B, T)
        ref_logp = token_logps(ref_model(**inputs).logits, batch["labels"])  # (B, T)
        counted = batch["labels"] != IGNORE_INDEX  # (B, T)
        k1 += torch.where(counted, kl_k1(logp, ref_logp), 0).sum(1).tolist()  # (B,)
        k3 += torch.where(counted, kl_k3(logp, ref_logp), 0).sum(1).tolist()  # (B,)
        n += counted.sum(1).tolist()
    return texts, k1, k3, n


def sampled_kl(model, ref_model, fmt: ChatFormat, prompts: list, cfg: DPOConfig, seed: int) -> dict:
    """Per-token k1 and k3 estimates of KL(π || π_ref) on responses sampled from π at temperature 1."""
    _, k1, k3, n = sample_logratios(model, ref_model, fmt, prompts, cfg.kl_eval_max_new_tokens, cfg, seed)
    return {"eval_kl/k1": sum(k1) / sum(n), "eval_kl/k3": sum(k3) / sum(n), "eval_kl/tokens": sum(n)}


def monitor_step(monitor: RunMonitor, model, ref_model, fmt: ChatFormat, prompts: list, cfg: DPOConfig, step: int
                 ) -> tuple[dict, bool]:
    """The monitor at an evaluation: sampled held-out responses with their implicit rewards, tokens, KL and
    held-out scores; the flip probe; out/best at a new best of the samples' mean held-out score."""
    m = cfg.monitor
    texts, k1, _, n = sample_logratios(model, ref_model, fmt, prompts, m.max_new_tokens, cfg, cfg.seed + step)
    scores = None if cfg.loss in REFERENCE_FREE else [cfg.beta * x for x in k1]
    heldout = monitor.score_heldout(prompts, texts)
    samples = make_samples(prompts, texts, scores, [t - 1 for t in n], [t - 1 < m.max_new_tokens for t in n],
                           heldout, monitor.world)  # t - 1: the end-of-turn token is scored even after a cut sample
    extra = {"kl": sum(k1) / len(k1)}
    if m.pushback_prompts:
        answer = answer_greedy(model, fmt, m.max_new_tokens, cfg.micro_batch_size)
        extra.update(flip=pushback_flips(answer, prompts[:m.pushback_prompts], m.pushback),
                     flip_n=len(prompts[:m.pushback_prompts]))
    known = [h for h in heldout if h is not None]
    best = sum(known) / len(known) if known else None
    return monitor.step(step, samples, extra, best, lambda path: save_pretrained(model, fmt.tokenizer, str(path)))


# ---------------------------------------------------------------------------------------------
# Reference log-probs, computed once and cached


def reference_key(ref_model, pairs: list[Pair]) -> str:
    """sha256 of the reference's weights and of every scored sequence (so of data, tokenizer, max_length, order)."""
    h = hashlib.sha256(b"tether-dpo-reference-v1")
    for name, tensor in sorted(ref_model.state_dict().items()):
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for p in pairs:
        h.update(json.dumps([p.chosen.input_ids, p.chosen.loss_mask, p.rejected.input_ids,
                             p.rejected.loss_mask]).encode())
    return h.hexdigest()


@torch.no_grad()
def reference_logps(ref_model, pairs: list[Pair], pad_id: int, batch_size: int, cache: Path) -> bool:
    """Fill each pair's ref_chosen / ref_rejected: from `cache` when its key matches, else by one no-grad pass
    over all pairs (longest first, batch_size pairs at a time), then saved to `cache`. True on a cache hit."""
    def compute() -> dict[str, torch.Tensor]:
        chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))  # (P,), (P,)
        order = sorted(range(len(pairs)), key=lambda i: -max(len(pairs[i].chosen.input_ids),
                                                               len(pairs[i].rejected.input_ids)))
        was_training = ref_model.training
        ref_model.eval()
        with progress_bar("dpo reference", total=len(pairs)) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                b = forward_pairs(ref_model, [pairs[i] for i in idx], pad_id)
                chosen[idx], rejected[idx] = b.policy_chosen.float().cpu(), b.policy_rejected.float().cpu()
                bar.update(len(idx))
        ref_model.train(was_training)
        return {"chosen": chosen, "rejected": rejected}

    logps, hit = cached_tensors(cache, reference_key(ref_model, pairs), compute, write=distributed.is_main())
    for p, c, r in zip(pairs, logps["chosen"].tolist(), logps["rejected"].tolist()):
        p.ref_chosen, p.ref_rejected = c, r
    return hit


# ---------------------------------------------------------------------------------------------
# The stage


def load_pairs(cfg: DPOConfig, fmt: ChatFormat, comparisons: list[Comparison]
               ) -> tuple[list[Pair], list[Pair], list[Pair], dict]:
    """(all pairs, train, held-out, report): the comparisons encoded, held-out prompts split off."""
    with naming(cfg.data):
        pairs, report = encode_comparisons(fmt, comparisons, cfg)
    train, held_out = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    report.update(train_pairs=len(train), eval_pairs=len(held_out),
                  train_prompts=len({p.prompt_key for p in train}), eval_prompts=len({p.prompt_key for p in held_out}))
    check(len(train) >= cfg.batch_size, "batch_size", f"larger than the {len(train)} training pairs")
    return pairs, train, held_out, report


def prepare_reference(cfg: DPOConfig, model, pairs: list[Pair], run_dir: Path, pad_id: int):
    """Fill the pairs' reference log-probs (cached) while `model` still holds its initial weights; return the
    frozen reference the sampled KL and the monitor need (None when neither runs)."""
    ref_model = distributed.prepare(load_policy(cfg.ref_model, trust_remote_code=cfg.trust_remote_code), cfg,
                                    next(model.parameters()).device) if cfg.ref_model else adapters_disabled(model)
    if cfg.loss not in REFERENCE_FREE:
        hit = reference_logps(ref_model, pairs, pad_id, cfg.micro_batch_size, run_dir / CACHE)
        console.print(f"dpo: reference log-probs {'read from' if hit else 'computed and saved to'} {run_dir / CACHE}")
    if not cfg.kl_eval_prompts and not cfg.monitor.enabled:
        return None  # a separate reference model is freed here
    return ref_model.requires_grad_(False) if cfg.ref_model else frozen_reference(model)


def run(cfg: DPOConfig) -> Path:
    """Train the policy with cfg.loss; returns the folder of the final model (`out/model`)."""
    if cfg.loss in UNPAIRED_LOSSES:  # KTO: unpaired rows, its own step (see tether.stages.kto)
        from tether.stages.kto import run as run_unpaired

        return run_unpaired(cfg)
    # 1. Data read and validated before any model work, encoded, split by prompt.
    comparisons = load_comparisons(cfg.data, cfg.format, cfg.split, labelled=True)
    fmt = chat_format(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.chat_template, cfg.model)
    pairs, train, held_out, report = load_pairs(cfg, fmt, comparisons)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "data_report.json").write_text(json.dumps(report, indent=1))
    console.print(f"dpo: {report['pairs']} pairs ({report['train_pairs']} train, {report['eval_pairs']} held out); "
                  f"{report['ties_dropped']} ties dropped; to fit max_length={cfg.max_length}, "
                  f"{report['truncated_pairs']} prompts cut, {report['dropped_response_too_long']} pairs dropped (a "
                  "response alone too long)")
    # 2. Policy (on the device) and reference. π_ref's log-probs are computed once (or read from the cache)
    #    before training and before resuming, while `model` still holds the initial weights.
    torch.manual_seed(cfg.seed)
    model = adapt(load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg)  # LoRA
    check_positions(model, cfg.max_length, "max_length")
    model = distributed.prepare(model, cfg, distributed.setup(cfg))  # device, bf16, gradient checkpointing
    model.eval()  # no dropout: see the module docstring
    kl_ref = prepare_reference(cfg, model, pairs, run_dir, fmt.pad_id)
    lengths = [max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in train]
    return optimise(cfg, run_dir, model, fmt, train, held_out, lengths, kl_ref,
                    Steps("dpo", train_step, evaluate, "rewards/accuracies", "acc"))


@dataclass
class Steps:
    """What differs between the pair losses (DPO and its family) and KTO inside `optimise`'s loop."""

    name: str
    """Progress-bar label."""
    train_step: Callable
    """(model, optimizer, batch, cfg, pad_id, lr, guard) -> metrics, one optimizer step."""
    evaluate: Callable
    """(model, held_out, cfg, pad_id) -> eval_... metrics."""
    bar_metric: str
    """The metric shown beside the loss on the progress bar."""
    bar_label: str
    """Its short name there."""


def optimise(cfg: DPOConfig, run_dir: Path, model, fmt: ChatFormat, train: list, held_out: list, lengths: list[int],
             kl_ref, steps_of: Steps) -> Path:
    """The training loop shared by DPO and KTO over encoded items (each with .prompt and .prompt_key);
    returns the folder of the final model (`out/model`)."""
    pad_id, tokenizer = fmt.pad_id, fmt.tokenizer
    kl_prompts = list({x.prompt_key: x.prompt for x in held_out}.values())[:cfg.kl_eval_prompts]
    # 3. Wrapped for the ranks (DDP: `net` is a wrapper; FSDP2: the model, sharded); optimizer; resume restores
    #    weights, optimizer moments and RNG.
    net = distributed.wrap(model, cfg.strategy)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2))
    start = resume_training(cfg, run_dir, model, optimizer)
    log, guard = MetricsLog(run_dir / "metrics.jsonl", start, cfg), NonFiniteGuard.from_config(cfg, start)
    monitor = open_monitor(cfg.monitor, run_dir, start, cfg.trust_remote_code)
    monitor_prompts = list({x.prompt_key: x.prompt for x in held_out or train}.values())[:cfg.monitor.samples]
    steps, per_epoch = total_steps(cfg, len(train)), len(train) // cfg.batch_size
    epoch, batches, started, tokens_seen = -1, [], time.perf_counter(), 0
    with progress_bar(steps_of.name, total=steps, completed=start) as bar:
        for step in range(start, steps):
            # 4. The step's items are a pure function of (seed, step): nothing else to restore.
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                batches = epoch_batches(lengths, cfg.batch_size, cfg.bucket_size, cfg.seed, epoch)
            batch = [train[i] for i in batches[step % per_epoch]]
            # 5. Forward per micro-batch, losses, accumulate, clip, step (DPO: chosen + rejected in one forward;
            #    KTO: z_ref of the whole batch first).
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, steps, cfg.min_lr_ratio)
            row = {"step": step + 1, "epoch": step / per_epoch,
                   **steps_of.train_step(net, optimizer, batch, cfg, pad_id, lr, guard)}
            tokens_seen += row["tokens"]
            row["tokens_per_s"] = tokens_seen / (time.perf_counter() - started)
            # 6. Held-out metrics (every rank computes them alike), the sampled KL (rank 0, which logs it).
            last = step + 1 == steps
            evaluation = (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last
            if held_out and evaluation:
                row.update(steps_of.evaluate(model, held_out, cfg, pad_id))
                if cfg.kl_eval_prompts and distributed.is_main():
                    row.update(sampled_kl(model, kl_ref, fmt, kl_prompts, cfg, seed=cfg.seed + step))
            # 7. The monitor at evaluations (rank 0): sampled responses, alerts, the best policy by the held-out signal.
            stop = False
            if monitor is not None and evaluation:
                monitored, stop = monitor_step(monitor, model, kl_ref, fmt, monitor_prompts, cfg, step + 1)
                row.update({k: v for k, v in monitored.items() if v is not None})  # rows hold numbers only
            stop = distributed.broadcast_flag(stop) if evaluation else stop
            # 8. Metric lines, checkpoints (with the monitor's state); an alert with stop_on_alert ends the run.
            if (step + 1) % cfg.log_every == 0 or "eval_loss" in row or "monitor/alerts" in row or last:
                log.write(row)
            if stop:
                break
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and not last:
                state = {"step": step + 1, "optimizer": distributed.optimizer_state(model, optimizer),
                         "rng": rng_state(), "monitor": monitor.state_dict() if monitor is not None else {}}
                distributed.on_main(model, lambda plain: save_checkpoint(run_dir, step + 1, plain, tokenizer, state,
                                                                         keep=cfg.keep_checkpoints))
            bar.update(1, loss=row["loss"], **{steps_of.bar_label: row[steps_of.bar_metric]})
    log.close()
    # 9. The final model as a plain Hugging Face folder (rank 0).
    final = run_dir / "model"
    distributed.on_main(model, lambda plain: save_pretrained(plain, tokenizer, str(final)))
    distributed.barrier()  # every rank returns once the model is on disk
    return final

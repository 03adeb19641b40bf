"""`tether dpo loss=kto`: KTO (Ethayarajh et al. 2024) on unpaired thumbs-up/down rows, against a frozen reference.

A module of its own, entered from `tether.stages.dpo.run`, because KTO's data and step differ from the pair
losses': one sequence per row instead of two, a label instead of an order, and a reference point z_ref that
must be known before the first micro-batch's loss. Folding that into dpo.py would put `if kto` branches in
its encoder, cache, step and metrics; here the config, the encoder of responses, the monitor and the sampled
KL are dpo's, and only what differs is written again.

Data (`tether.data.formats.load_unpaired`). cfg.data holds TRL unpaired rows {"prompt", "completion",
"label": true|false}, or tether comparisons converted: chosen -> desirable, rejected -> undesirable, ties
dropped and counted (a tie labels neither response), null an error naming its line. Each row is encoded as
prompt + completion in the model's chat format (tether.chat), the mask on the completion and its end-of-turn token;
a prompt is cut to fit, a row whose completion alone does not fit is dropped, both counted. The held-out split is by prompt. Within each split every row then gets a KL pair: its
prompt followed by another row's completion (`mismatched_partners`), fixed for the run.

Reference. log π_ref of every completion and every KL pair is computed once, before training, and cached in
`out/ref_logps.safetensors` under a sha256 of the reference weights and every scored sequence (as in DPO).

Training. Each optimizer step: (1) a no-grad forward of the batch's KL pairs gives z_ref = max(0,
mean(log π - log π_ref)) for the WHOLE batch; (2) per micro-batch, a forward of the completions, the KTO
losses against that z_ref, their sum divided by the batch's rows, backward. One z_ref per optimizer batch
keeps the loss independent of the micro-batch split (TRL computes it per device micro-batch, so there its
loss changes with gradient accumulation). The extra forward costs what TRL's KL forward costs. A NaN or inf
loss or gradient is skipped or halts the run (cfg.nonfinite, `tether.guard`), as in every training loop.

Metrics, under TRL's KTO names: loss, kl (z_ref), rewards/chosen and rewards/rejected (mean implicit reward
β(log π - log π_ref) of the desirable and of the undesirable rows; a side absent from a batch is left out),
rewards/margins (their difference), logps/chosen, logps/rejected, count/chosen, count/rejected. Evaluations:
the same on the held-out rows with one z_ref over all of them (eval_ prefix), the sampled KL and the monitor
as in DPO.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tether import distributed
from tether.chat import ChatFormat, chat_format
from tether.checkpoint import cached_tensors
from tether.config import check, save_config
from tether.data.formats import load_unpaired
from tether.data.preferences import split_by_prompt
from tether.data.unpaired import Unpaired, mismatched_partners
from tether.math.dpo_losses import (
    UNPAIRED_LOSSES,
    implicit_rewards,
    kto_reference_point,
    sequence_logps,
)
from tether.errors import naming
from tether.guard import NonFiniteGuard
from tether.lora import adapt, adapters_disabled, frozen_reference
from tether.models import check_positions, load_policy, load_tokenizer
from tether.progress import progress_bar
from tether.stages.dpo import (
    CACHE,
    DPOConfig,
    Steps,
    add_sums,
    console,
    encode_responses,
    example,
    optimise,
)
from tether.stages.dpo import reference_key as weights_key
from tether.training import (
    Example,
    collate,
)


@dataclass
class KTORow:
    """One unpaired row encoded for KTO."""

    prompt: str | list
    """The prompt as in the data."""
    prompt_key: str
    """The prompt as canonical JSON: the unit of the held-out split."""
    text: str
    """The completion as in the data (another row's KL pair reuses it)."""
    completion: Example
    """prompt + completion; loss_mask is 1 on the completion's tokens and its end-of-turn token only."""
    desirable: bool
    """The label: True thumbs up, False thumbs down."""
    kl: Example | None = None
    """prompt + another row's completion (a mismatched pair for z_ref), masked the same way."""
    ref_logp: float = 0.0
    """log π_ref(completion | prompt), summed over the completion's tokens."""
    ref_kl_logp: float = 0.0
    """log π_ref(mismatched completion | prompt)."""


@dataclass
class RowBatch:
    """What the loss and metrics read for M rows. Log-probs are summed over completion tokens."""

    policy_logps: torch.Tensor
    """(M,) log π(completion), with grad when the forward had it."""
    ref_logps: torch.Tensor
    """(M,) log π_ref(completion), from the rows' cached values."""
    desirable: torch.Tensor
    """(M,) bool."""
    tokens: int
    """Non-padding tokens in the forward pass (prompts included)."""


# ---------------------------------------------------------------------------------------------
# Data: encode, pair for the KL estimate


def encode_rows(fmt: ChatFormat, rows: list[Unpaired], max_length: int, max_prompt_length: int | None = None
                ) -> tuple[list[KTORow], dict]:
    """Rows in data order, and a report of what was cut (the prompt) or dropped (a completion alone too long)."""
    encoded = encode_responses(fmt, [r.prompt for r in rows], [r.completion for r in rows], max_length,
                               max_prompt_length)
    out, truncated, too_long = [], 0, 0
    for r, e in zip(rows, encoded):
        if e.response_cut:
            too_long += 1
            continue
        truncated += e.truncated
        out.append(KTORow(r.prompt, r.prompt_key, r.completion, example(e), r.label))
    return out, {"truncated_rows": truncated, "dropped_response_too_long": too_long, "rows": len(out),
                 "max_length": max_length, "max_prompt_length": max_prompt_length, "chat_template": fmt.name}


def attach_kl_pairs(fmt: ChatFormat, rows: list[KTORow], max_length: int, seed: int,
                    max_prompt_length: int | None = None) -> int:
    """Give each row its KL pair: its prompt + the completion of `mismatched_partners`' choice; returns how many
    pairs were truncated (a partner's completion may be cut at its end: it scores alike for policy and reference)."""
    partners = mismatched_partners([r.prompt_key for r in rows], seed)
    encoded = encode_responses(fmt, [r.prompt for r in rows], [rows[j].text for j in partners], max_length,
                               max_prompt_length)
    for r, e in zip(rows, encoded):
        r.kl = example(e)
    return sum(e.truncated for e in encoded)


def load_rows(cfg: DPOConfig, fmt: ChatFormat, unpaired: list[Unpaired], report: dict
              ) -> tuple[list[KTORow], list[KTORow], list[KTORow], dict]:
    """(all rows, train, held-out, report): encoded, split by prompt, each split paired for z_ref on its own."""
    with naming(cfg.data):
        rows, encoded = encode_rows(fmt, unpaired, cfg.max_length, cfg.max_prompt_length)
    train, held_out = split_by_prompt(rows, cfg.eval_fraction, cfg.seed)
    cut = attach_kl_pairs(fmt, train, cfg.max_length, cfg.seed, cfg.max_prompt_length)
    cut += attach_kl_pairs(fmt, held_out, cfg.max_length, cfg.seed + 1, cfg.max_prompt_length)
    report = {**report, **encoded, "truncated_kl_pairs": cut, "train_rows": len(train), "eval_rows": len(held_out),
              "train_desirable": sum(r.desirable for r in train), "train_prompts": len({r.prompt_key for r in train}),
              "eval_prompts": len({r.prompt_key for r in held_out})}
    check(len(train) >= cfg.batch_size, "batch_size", f"larger than the {len(train)} training rows")
    return train + held_out, train, held_out, report


# ---------------------------------------------------------------------------------------------
# Log-probs, the reference point, losses, metrics


def forward_examples(model, examples: list[Example], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed log-probs (B,) of each sequence's counted tokens in one forward pass, and its non-padding tokens."""
    batch = collate(examples, pad_id)  # each (B, T)
    device = distributed.device_of(model)  # `model` may be a DDP wrapper, or LoRA's base view
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    return sequence_logps(logits, batch["labels"].to(device))[0], int(batch["attention_mask"].sum())


def forward_rows(model, rows: list[KTORow], pad_id: int) -> RowBatch:
    logps, tokens = forward_examples(model, [r.completion for r in rows], pad_id)  # (M,)
    device = logps.device
    return RowBatch(logps, torch.tensor([r.ref_logp for r in rows], dtype=torch.float32, device=device),
                    torch.tensor([r.desirable for r in rows], device=device), tokens)


@torch.no_grad()
def reference_point(model, rows: list[KTORow], micro_batch_size: int, pad_id: int) -> tuple[torch.Tensor, int]:
    """z_ref of `rows` (a whole optimizer batch, or the held-out set) from their KL pairs, and the tokens read."""
    chunks = [forward_examples(model, [r.kl for r in rows[i:i + micro_batch_size]], pad_id)
              for i in range(0, len(rows), micro_batch_size)]
    policy = torch.cat([logps for logps, _ in chunks])  # (N,)
    ref = torch.tensor([r.ref_kl_logp for r in rows], dtype=torch.float32, device=policy.device)  # (N,)
    return kto_reference_point(policy, ref), sum(n for _, n in chunks)


def row_losses(b: RowBatch, z_ref: torch.Tensor, cfg: DPOConfig) -> torch.Tensor:
    """The per-row losses (M,) of cfg.loss (a key of UNPAIRED_LOSSES)."""
    return UNPAIRED_LOSSES[cfg.loss](b.policy_logps, b.ref_logps, b.desirable, z_ref, beta=cfg.beta,
                                     lambda_d=cfg.desirable_weight, lambda_u=cfg.undesirable_weight)


def row_sums(b: RowBatch, losses: torch.Tensor, cfg: DPOConfig) -> dict[str, float]:
    """Sums of the logged quantities over a micro-batch, split by label."""
    p = b.policy_logps.detach()
    r = implicit_rewards(p, b.ref_logps, cfg.beta)  # (M,)
    d, u = b.desirable, ~b.desirable
    return {"loss": float(losses.detach().sum()), "rewards/chosen": float(r[d].sum()),
            "rewards/rejected": float(r[u].sum()), "logps/chosen": float(p[d].sum()),
            "logps/rejected": float(p[u].sum()), "count/chosen": int(d.sum()), "count/rejected": int(u.sum()),
            "rows": len(d), "tokens": b.tokens}


def means(s: dict) -> dict:
    """Per-row means: the loss over all rows, rewards and log-probs over the rows of their label."""
    out = {"loss": s["loss"] / s["rows"], "count/chosen": s["count/chosen"], "count/rejected": s["count/rejected"]}
    for side in ("chosen", "rejected"):
        if s[f"count/{side}"]:
            out[f"rewards/{side}"] = s[f"rewards/{side}"] / s[f"count/{side}"]
            out[f"logps/{side}"] = s[f"logps/{side}"] / s[f"count/{side}"]
    if s["count/chosen"] and s["count/rejected"]:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


def train_step(model, optimizer, rows: list[KTORow], cfg: DPOConfig, pad_id: int, lr: float,
               guard: NonFiniteGuard | None = None) -> dict:
    """One optimizer step over `rows`, split into micro-batches of micro_batch_size rows; `guard` (the run's,
    else a fresh one from cfg) skips or halts it on a non-finite loss or gradient, as in DPO.

    z_ref is computed once for all of `rows` before any loss; each micro-batch's summed row losses are divided
    by the rows of the whole step, so loss and gradient equal those of one big batch however it is split. Under
    torchrun every rank computes z_ref of the whole batch and runs its share of the micro-batches.
    """
    z_ref, kl_tokens = reference_point(distributed.unwrap(model), rows, cfg.micro_batch_size, pad_id)
    total: dict = {}
    share = distributed.shard([rows[i:i + cfg.micro_batch_size] for i in range(0, len(rows), cfg.micro_batch_size)])
    for i, (micro, real) in enumerate(share):
        with distributed.accumulating(model, last=i == len(share) - 1):
            b = forward_rows(model, micro, pad_id)
            losses = row_losses(b, z_ref, cfg)  # (M,)
            distributed.normalised(losses.sum(), len(rows), real).backward()
        sums = row_sums(b, losses, cfg)
        add_sums(total, sums if real else dict.fromkeys(sums, 0))
    total = distributed.all_reduce_sum(total)
    total["tokens"] += kl_tokens
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, total["loss"] / len(rows))
    return {**means(total), "kl": float(z_ref), "grad_norm": grad_norm, "lr": lr, "rows": len(rows),
            "tokens": total["tokens"], "nonfinite_skips": skipped}


@torch.no_grad()
def evaluate(model, rows: list[KTORow], cfg: DPOConfig, pad_id: int) -> dict:
    """Held-out loss, kl, rewards and log-probs as in training, with one z_ref over all held-out rows."""
    z_ref, _ = reference_point(model, rows, cfg.micro_batch_size, pad_id)
    total: dict = {}
    for i in range(0, len(rows), cfg.micro_batch_size):
        b = forward_rows(model, rows[i:i + cfg.micro_batch_size], pad_id)
        add_sums(total, row_sums(b, row_losses(b, z_ref, cfg), cfg))
    return {f"eval_{k}": v for k, v in {**means(total), "kl": float(z_ref)}.items()}


# ---------------------------------------------------------------------------------------------
# Reference log-probs, computed once and cached


def reference_key(ref_model, rows: list[KTORow]) -> str:
    """sha256 of the reference's weights and of every scored sequence (completions and KL pairs)."""
    h = hashlib.sha256(b"tether-kto-reference-v1")
    h.update(weights_key(ref_model, []).encode())  # DPO's key of no pairs: the weights alone
    for r in rows:
        h.update(json.dumps([r.completion.input_ids, r.completion.loss_mask, r.kl.input_ids, r.kl.loss_mask]).encode())
    return h.hexdigest()


@torch.no_grad()
def score(model, examples: list[Example], pad_id: int, batch_size: int) -> torch.Tensor:
    """Summed log-probs (E,) of `examples` in eval mode, longest first, batch_size sequences at a time."""
    out = torch.zeros(len(examples))  # (E,)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    was_training = model.training
    model.eval()
    with progress_bar("kto reference", total=len(examples)) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = forward_examples(model, [examples[i] for i in idx], pad_id)[0].float().cpu()
            bar.update(len(idx))
    model.train(was_training)
    return out


def reference_logps(ref_model, rows: list[KTORow], pad_id: int, batch_size: int, cache: Path) -> bool:
    """Fill each row's ref_logp and ref_kl_logp: from `cache` when its key matches, else by one no-grad pass,
    then saved to `cache`. True on a cache hit."""
    def compute() -> dict[str, torch.Tensor]:
        logps = score(ref_model, [r.completion for r in rows] + [r.kl for r in rows], pad_id, batch_size)  # (2N,)
        return {"completion": logps[:len(rows)], "kl": logps[len(rows):]}

    logps, hit = cached_tensors(cache, reference_key(ref_model, rows), compute, write=distributed.is_main())
    for r, c, k in zip(rows, logps["completion"].tolist(), logps["kl"].tolist()):
        r.ref_logp, r.ref_kl_logp = c, k
    return hit


def prepare_reference(cfg: DPOConfig, model, rows: list[KTORow], run_dir: Path, pad_id: int):
    """Fill the rows' reference log-probs (cached) while `model` holds its initial weights; return the frozen
    reference the sampled KL and the monitor need (None when neither runs)."""
    ref_model = distributed.prepare(load_policy(cfg.ref_model, trust_remote_code=cfg.trust_remote_code), cfg,
                                    next(model.parameters()).device) if cfg.ref_model \
        else adapters_disabled(model)  # with LoRA: the policy with its adapters disabled (tether.lora)
    hit = reference_logps(ref_model, rows, pad_id, cfg.micro_batch_size, run_dir / CACHE)
    console.print(f"kto: reference log-probs {'read from' if hit else 'computed and saved to'} {run_dir / CACHE}")
    if not cfg.kl_eval_prompts and not cfg.monitor.enabled:
        return None
    return ref_model.requires_grad_(False) if cfg.ref_model else frozen_reference(model)


# ---------------------------------------------------------------------------------------------
# The stage


def run(cfg: DPOConfig) -> Path:
    """Train the policy with KTO; returns the folder of the final model (`out/model`)."""
    # 1. Data read and validated before any model work, encoded, split by prompt, paired for z_ref.
    unpaired, read_report = load_unpaired(cfg.data, cfg.format, cfg.split)
    fmt = chat_format(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.chat_template, cfg.model)
    rows, train, held_out, report = load_rows(cfg, fmt, unpaired, read_report)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "data_report.json").write_text(json.dumps(report, indent=1))
    console.print(f"kto: {report['rows']} rows ({report['train_rows']} train, {report['eval_rows']} held out; "
                  f"{report['desirable']} desirable, {report['undesirable']} undesirable read); "
                  f"{report['ties_dropped']} ties dropped, {report['truncated_rows']} prompts cut to fit "
                  f"max_length={cfg.max_length}, {report['dropped_response_too_long']} dropped (a completion alone "
                  "too long)")
    # 2. Policy (on the device) and reference; π_ref's log-probs of completions and KL pairs once (or from the cache).
    torch.manual_seed(cfg.seed)
    model = adapt(load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg)  # LoRA
    check_positions(model, cfg.max_length, "max_length")
    model = distributed.prepare(model, cfg, distributed.setup(cfg))  # device, bf16, gradient checkpointing
    model.eval()  # no dropout, as in DPO
    kl_ref = prepare_reference(cfg, model, rows, run_dir, fmt.pad_id)
    return optimise(cfg, run_dir, model, fmt, train, held_out, [len(r.completion.input_ids) for r in train],
                    kl_ref, Steps("kto", train_step, evaluate, "kl", "kl"))

"""KTO (Ethayarajh et al. 2024) on unpaired thumbs-up/down rows, `tether dpo loss=kto`: the stage's second variant
beside `pairs`, with the same names (NAME, BAR, read, load, summary, length, reference_logps, train_step, evaluate).

One sequence per row, a label instead of an order, and a reference point z_ref = max(0, mean(log π - log π_ref))
over the rows' KL pairs (each row's prompt with another row's completion, `mismatched_partners`, fixed for the run).
z_ref is computed once per optimizer batch, before any micro-batch's loss, so the loss does not depend on the split
(TRL computes it per device micro-batch). Comparisons read as rows: chosen desirable, rejected undesirable, ties
dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tether import distributed
from tether.chat import ChatFormat
from tether.config import check
from tether.data.formats import load_unpaired
from tether.data.preferences import split_by_prompt
from tether.data.unpaired import Unpaired, mismatched_partners
from tether.errors import naming
from tether.guard import NonFiniteGuard
from tether.math.dpo_losses import UNPAIRED_LOSSES, implicit_rewards, kto_reference_point
from tether.stages.dpo.config import DPOConfig
from tether.stages.dpo.sequences import (
    cached_logps,
    chunks,
    encode_responses,
    example,
    fast_paths,
    forward_examples,
    held_out_sums,
    sequences_key,
    step_sums,
)
from tether.logprobs import FastPaths
from tether.training import Example

NAME = "kto"
"""Progress-bar label and console prefix."""
BAR = ("kl", "kl")
"""The metric shown beside the loss on the progress bar (z_ref), and its short name there."""


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
# Data: read, encode, pair for the KL estimate


def read(cfg: DPOConfig) -> tuple[list[Unpaired], dict]:
    """The rows of cfg.data (TRL unpaired rows, or comparisons split into rows) and a report of what was read."""
    return load_unpaired(cfg.data, cfg.format, cfg.split)


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


def load(cfg: DPOConfig, fmt: ChatFormat, unpaired: list[Unpaired], report: dict
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


def summary(report: dict) -> str:
    return (f"{report['rows']} rows ({report['train_rows']} train, {report['eval_rows']} held out; "
            f"{report['desirable']} desirable, {report['undesirable']} undesirable read); "
            f"{report['ties_dropped']} ties dropped, {report['truncated_rows']} prompts cut to fit "
            f"max_length={report['max_length']}, {report['dropped_response_too_long']} dropped (a completion alone "
            "too long)")


def length(r: KTORow) -> int:
    """The length a row is bucketed by."""
    return len(r.completion.input_ids)


# ---------------------------------------------------------------------------------------------
# Reference log-probs


def reference_logps(ref_model, rows: list[KTORow], pad_id: int, batch_size: int, cache: Path,
                    fast: FastPaths = FastPaths()) -> bool:
    """Fill each row's ref_logp and ref_kl_logp: from `cache` when its key matches, else by one no-grad pass over
    the completions and KL pairs (longest first, batch_size sequences per forward), then saved to `cache`. True on
    a cache hit."""
    n, examples = len(rows), [r.completion for r in rows] + [r.kl for r in rows]
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    logps, hit = cached_logps(sequences_key(NAME, ref_model, examples), ref_model, examples, chunks(order, batch_size),
                              pad_id, cache, "kto reference", fast)
    for r, c, k in zip(rows, logps[:n], logps[n:]):
        r.ref_logp, r.ref_kl_logp = c, k
    return hit


# ---------------------------------------------------------------------------------------------
# Log-probs, the reference point, losses, metrics


def forward_rows(model, rows: list[KTORow], pad_id: int, fast: FastPaths = FastPaths()) -> RowBatch:
    logps, _, tokens = forward_examples(model, [r.completion for r in rows], pad_id, fast)  # (M,)
    device = logps.device
    return RowBatch(logps, torch.tensor([r.ref_logp for r in rows], dtype=torch.float32, device=device),
                    torch.tensor([r.desirable for r in rows], device=device), tokens)


@torch.no_grad()
def reference_point(model, rows: list[KTORow], micro_batch_size: int, pad_id: int, fast: FastPaths = FastPaths()
                    ) -> tuple[torch.Tensor, int]:
    """z_ref of `rows` (a whole optimizer batch, or the held-out set) from their KL pairs, and the tokens read."""
    parts = [forward_examples(model, [r.kl for r in micro], pad_id, fast) for micro in chunks(rows, micro_batch_size)]
    policy = torch.cat([logps for logps, _, _ in parts])  # (N,)
    ref = torch.tensor([r.ref_kl_logp for r in rows], dtype=torch.float32, device=policy.device)  # (N,)
    return kto_reference_point(policy, ref), sum(n for _, _, n in parts)


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
    """One optimizer step over `rows`: z_ref once for all of them (every rank computes it for the whole batch), then
    micro_batch_size rows per forward (`step_sums`: exact accumulation, the ranks' shares); `guard` (the run's, else
    a fresh one from cfg) skips or halts it on a non-finite loss or gradient."""
    fast = fast_paths(cfg)
    z_ref, kl_tokens = reference_point(distributed.unwrap(model), rows, cfg.micro_batch_size, pad_id, fast)
    total = step_sums(model, rows, cfg.micro_batch_size, lambda micro: forward_rows(model, micro, pad_id, fast),
                      lambda b: row_losses(b, z_ref, cfg), lambda b, losses: row_sums(b, losses, cfg))
    total["tokens"] += kl_tokens
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, total["loss"] / len(rows))
    return {**means(total), "kl": float(z_ref), "grad_norm": grad_norm, "lr": lr, "rows": len(rows),
            "tokens": total["tokens"], "nonfinite_skips": skipped}


@torch.no_grad()
def evaluate(model, rows: list[KTORow], cfg: DPOConfig, pad_id: int) -> dict:
    """Held-out loss, kl, rewards and log-probs as in training, with one z_ref over all held-out rows."""
    fast = fast_paths(cfg)
    z_ref, _ = reference_point(model, rows, cfg.micro_batch_size, pad_id, fast)
    total = held_out_sums(rows, cfg.micro_batch_size, lambda micro: forward_rows(model, micro, pad_id, fast),
                          lambda b: row_losses(b, z_ref, cfg), lambda b, losses: row_sums(b, losses, cfg))
    return {f"eval_{k}": v for k, v in {**means(total), "kl": float(z_ref)}.items()}

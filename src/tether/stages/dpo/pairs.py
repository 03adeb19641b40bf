"""The pair losses of `tether dpo` (DPO, IPO, cDPO, robust DPO, SimPO: `tether.math.dpo_losses.DPO_LOSSES`) on
labelled comparisons: one of the stage's two variants (the other is `unpaired`, KTO), each a module with the same
names: NAME, BAR, read, load, summary, length, reference_logps, train_step, evaluate.

Each micro-batch puts its pairs' chosen and rejected sequences in one forward pass (2M rows). Ties are dropped
and counted, except for the losses that model them (`TIE_AWARE`, IPO).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tether.chat import ChatFormat
from tether.config import check
from tether.data.formats import load_comparisons
from tether.data.preferences import Comparison, prompt_key, split_by_prompt
from tether.errors import naming
from tether.guard import NonFiniteGuard
from tether.math.dpo_losses import (
    DPO_LOSSES,
    LENGTH_NORMALISED,
    REFERENCE_FREE,
    TIE_AWARE,
    implicit_rewards,
    loss_keywords,
)
from tether.stages.dpo.config import DPOConfig
from tether.stages.dpo.sequences import (
    cached_logps,
    chunks,
    example,
    fast_paths,
    forward_examples,
    held_out_sums,
    sequences_key,
    step_sums,
)
from tether.logprobs import FastPaths
from tether.training import Example

NAME = "dpo"
"""Progress-bar label and console prefix."""
BAR = ("rewards/accuracies", "acc")
"""The metric shown beside the loss on the progress bar, and its short name there."""


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
# Data: read, encode, split


def read(cfg: DPOConfig) -> tuple[list[Comparison]]:
    """The labelled comparisons of cfg.data (an unlabelled row is an error naming its place)."""
    return (load_comparisons(cfg.data, cfg.format, cfg.split, labelled=True),)


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


def load(cfg: DPOConfig, fmt: ChatFormat, comparisons: list[Comparison]
         ) -> tuple[list[Pair], list[Pair], list[Pair], dict]:
    """(all pairs, train, held-out, report): the comparisons encoded, held-out prompts split off."""
    with naming(cfg.data):
        pairs, report = encode_comparisons(fmt, comparisons, cfg)
    train, held_out = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    report.update(train_pairs=len(train), eval_pairs=len(held_out),
                  train_prompts=len({p.prompt_key for p in train}), eval_prompts=len({p.prompt_key for p in held_out}))
    check(len(train) >= cfg.batch_size, "batch_size", f"larger than the {len(train)} training pairs")
    return pairs, train, held_out, report


def summary(report: dict) -> str:
    return (f"{report['pairs']} pairs ({report['train_pairs']} train, {report['eval_pairs']} held out); "
            f"{report['ties_dropped']} ties dropped; to fit max_length={report['max_length']}, "
            f"{report['truncated_pairs']} prompts cut, {report['dropped_response_too_long']} pairs dropped (a "
            "response alone too long)")


def length(p: Pair) -> int:
    """The length a pair is bucketed by: its longer sequence."""
    return max(len(p.chosen.input_ids), len(p.rejected.input_ids))


# ---------------------------------------------------------------------------------------------
# Reference log-probs


def scored(pairs: list[Pair]) -> list[Example]:
    """The sequences the reference scores: every chosen, then every rejected."""
    return [p.chosen for p in pairs] + [p.rejected for p in pairs]


def reference_key(ref_model, pairs: list[Pair]) -> str:
    return sequences_key(NAME, ref_model, scored(pairs))


def reference_logps(ref_model, pairs: list[Pair], pad_id: int, batch_size: int, cache: Path,
                    fast: FastPaths = FastPaths()) -> bool:
    """Fill each pair's ref_chosen / ref_rejected: from `cache` when its key matches, else by one no-grad pass over
    all pairs (longest first, the chosen and rejected of batch_size pairs in each forward), then saved to `cache`.
    True on a cache hit."""
    n = len(pairs)
    order = sorted(range(n), key=lambda i: -length(pairs[i]))
    batches = [idx + [n + i for i in idx] for idx in chunks(order, batch_size)]
    logps, hit = cached_logps(reference_key(ref_model, pairs), ref_model, scored(pairs), batches, pad_id, cache,
                              "dpo reference", fast)
    for p, c, r in zip(pairs, logps[:n], logps[n:]):
        p.ref_chosen, p.ref_rejected = c, r
    return hit


# ---------------------------------------------------------------------------------------------
# Log-probs, losses, metrics


def forward_pairs(model, pairs: list[Pair], pad_id: int, fast: FastPaths = FastPaths()) -> PairBatch:
    """Chosen and rejected of every pair in ONE forward pass (their shared prompts once, where `fast` allows):
    rows 0..M-1 chosen, M..2M-1 rejected."""
    logps, counts, tokens = forward_examples(model, scored(pairs), pad_id, fast)  # (2M,), (2M,)
    m, device = len(pairs), logps.device
    floats = lambda xs: torch.tensor(xs, dtype=torch.float32, device=device)  # noqa: E731
    return PairBatch(logps[:m], logps[m:], floats([p.ref_chosen for p in pairs]),
                     floats([p.ref_rejected for p in pairs]), counts[:m].float(), counts[m:].float(),
                     torch.tensor([p.tie for p in pairs], device=device), tokens)


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


def means(s: dict) -> dict:
    """Per-pair means of the sums (rewards and log-probs per non-tie pair)."""
    decided = max(s["decided"], 1)
    out = {"loss": s["loss"] / s["pairs"]}
    out.update({k: s[k] / decided for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                             "rewards/accuracies", "logps/chosen", "logps/rejected")})
    return out


def train_step(model, optimizer, pairs: list[Pair], cfg: DPOConfig, pad_id: int, lr: float,
               guard: NonFiniteGuard | None = None) -> dict:
    """One optimizer step over `pairs`, micro_batch_size pairs per forward (`step_sums`: exact accumulation, the
    ranks' shares); `guard` (the run's, else a fresh one from cfg) skips or halts it on a non-finite loss or
    gradient."""
    total = step_sums(model, pairs, cfg.micro_batch_size, lambda micro: forward_pairs(model, micro, pad_id, fast_paths(cfg)),
                      lambda b: pair_losses(b, cfg), lambda b, losses: pair_sums(b, losses, cfg))
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, total["loss"] / len(pairs))
    return {**means(total), "grad_norm": grad_norm, "lr": lr, "pairs": len(pairs), "tokens": total["tokens"],
            "nonfinite_skips": skipped}


@torch.no_grad()
def evaluate(model, pairs: list[Pair], cfg: DPOConfig, pad_id: int) -> dict:
    """Held-out loss, rewards and log-probs (as in training), and eval_logratio/chosen: the mean per-token
    log π - log π_ref on the held-out chosen responses. Not a KL: the responses are not samples from π."""
    total = held_out_sums(pairs, cfg.micro_batch_size, lambda micro: forward_pairs(model, micro, pad_id,
                                                                                   fast_paths(cfg)),
                          lambda b: pair_losses(b, cfg), lambda b, losses: pair_sums(b, losses, cfg))
    out = {f"eval_{k}": v for k, v in means(total).items()}
    if cfg.loss not in REFERENCE_FREE:
        out["eval_logratio/chosen"] = total["logratio/chosen"] / total["chosen_tokens"]
    return out

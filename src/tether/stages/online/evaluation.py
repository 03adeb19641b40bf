"""Held-out evaluation of an online RL run (tether.stages.online): responses to the world's held-out prompts,
their gold reward (an audit, never trained on) with its standard error, the proxy's score, length and EOS rate,
and each prompt's mean gold (eval_gold.jsonl: the differences between two evaluations, paired by prompt, have a
standard error of their own, `tether.monitor.stats.paired_difference`). Also the prompt encoding and the decoding the
loop shares with it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tether.monitor.stats import mean, standard_error
from tether.rewards_source import prompt_text
from tether.rollout import logprobs_of, row_noise, sample, sample_seed
from tether.stages.monitoring import gold_rewards
from tether.stages.online.config import OnlineConfig


def encode_prompts(fmt, prompts: list, max_prompt_length: int | None, report_to: Path | None = None
                   ) -> list[list[int]]:
    """The generation prompts (tether.chat), and with `report_to` (a run folder) its data_report.json: how many prompts
    lost earlier turns or the start of their text to max_prompt_length."""
    encoded = fmt.prompts_encoded(prompts, max_prompt_length)
    if report_to is not None:
        report = {"prompts": len(encoded), "earlier_turns_dropped": sum(e.turns_dropped > 0 for e in encoded),
                  "prompt_cut": sum(e.prompt_cut > 0 for e in encoded), "max_prompt_length": max_prompt_length,
                  "longest_prompt": max((len(e.input_ids) for e in encoded), default=0), "chat_template": fmt.name}
        (report_to / "data_report.json").write_text(json.dumps(report, indent=1))
    return [e.input_ids for e in encoded]


def decode(tokenizer, response_ids: torch.Tensor) -> list[str]:
    return [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]


def score_metrics(source, scores: torch.Tensor, prefix: str = "") -> dict:
    """score (the source's own scale) and score_normalised (when the source has a raw scale of its own)."""
    raw = getattr(source, "raw", None)
    return {f"{prefix}score": float((raw(scores) if raw else scores).mean()),
            f"{prefix}score_normalised": float(scores.mean()) if raw else None}


EVAL_GOLD_FILE = "eval_gold.jsonl"
"""One line per evaluation in an online run's folder: {"step", "samples" (eval_samples), "gold": [mean gold of
each held-out prompt over its samples, in eval_prompt_texts order, null where the world does not know it]}."""


def repeat_prompts(prompts: list, k: int) -> list:
    """Each prompt k times in a row, the evaluation's rows: [a, b] with k = 2 -> [a, a, b, b]."""
    return [p for p in prompts for _ in range(k)]


def prompt_means(values: list[float | None], k: int) -> list[float | None]:
    """Means of consecutive blocks of k values (one prompt's k samples), None where a block has no value.
    [1, 3, None, 2] with k = 2 -> [2.0, 2.0]."""
    return [mean(values[i:i + k]) for i in range(0, len(values), k)]


@torch.no_grad()
def evaluate(policy, fmt, source, world, prompts: list, cfg: OnlineConfig, heldout=None, ref=None
             ) -> tuple[dict, list[float | None], list[str]]:
    """Responses to held-out world prompts (greedy, or eval_samples each at eval_temperature): mean gold, proxy
    score, length and EOS rate (eval/...), and with a `heldout(prompts, responses)` scorer (a second reward
    model) its mean as eval/heldout; the mean gold of each prompt (`prompt_means`, for EVAL_GOLD_FILE); and the
    responses, one per row of `repeat_prompts(prompts, eval_samples)` (the monitor's eval_<rate> detectors).
    With the reference policy `ref`, sampling at the rollouts' temperature: eval/kl (and eval/kl_se), the k1
    estimate of KL(π || π_ref) per response, Σ_t log π - log π_ref on these samples: Gao et al.'s d² measured on
    a fixed set of many prompts, where the rollouts' kl/k1 comes from one step's 32 responses."""
    prompts = repeat_prompts(prompts, cfg.eval_samples)
    encoded = fmt.prompts_ids(prompts, cfg.max_prompt_length)
    measure_kl = ref is not None and cfg.eval_temperature > 0 and cfg.eval_temperature == cfg.temperature
    responses, lengths, eos, kl = [], [], [], []
    batch = cfg.eval_batch_size or cfg.batch_size
    for i in range(0, len(prompts), batch):
        rows = range(i, min(i + batch, len(prompts)))
        # Common random numbers: row j's uniforms are the same at every evaluation (step -1: none of the rollouts'),
        # whatever rows share its batch and however long the batch before it ran, so a token changes only where the
        # policy moved; one generator for all batches would shift every later batch's draws whenever an earlier
        # batch stopped at a different length.
        noise = row_noise([sample_seed(cfg.seed, -1, j) for j in rows], cfg.max_new_tokens, policy.device) \
            if cfg.eval_temperature > 0 else None
        r = sample(policy, [encoded[j] for j in rows], max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.eval_temperature, eos_token_id=fmt.stop_ids, pad_token_id=fmt.pad_id, noise=noise)
        responses += decode(fmt.tokenizer, r.response_ids)
        if measure_kl:  # the sampler's log-probs are the policy's at this temperature
            kl += sampled_kl(ref, r, cfg.temperature, cfg.batch_size)
        lengths += r.lengths.tolist()
        eos += r.has_eos.tolist()
    gold = gold_rewards(world, prompts, responses) if world is not None else [None] * len(prompts)
    out = {**({"eval/gold": mean(gold), "eval/gold_se": standard_error(gold), **category_gold(world, prompts, gold)}
              if world is not None else {}),  # your own prompts (eval_data): no gold to read
           **score_metrics(source, source(prompts, responses), "eval/"),
           "eval/response_length": sum(lengths) / len(lengths), "eval/eos_rate": sum(eos) / len(eos)}
    if measure_kl:
        out |= {"eval/kl": mean(kl), "eval/kl_se": standard_error(kl)}
    if getattr(source, "last_std", None) is not None:  # an ensemble reward model: its members' disagreement here
        out["eval/ensemble_std"] = float(source.last_std.mean())
    per_prompt = prompt_means(gold, cfg.eval_samples)
    if heldout is None:
        return out, per_prompt, responses
    held = heldout(prompts, responses)
    return out | {"eval/heldout": mean(held), "eval/heldout_se": standard_error(held)}, per_prompt, responses


def sampled_kl(ref, r, temperature: float, batch: int) -> list[float]:
    """Σ_t log π - log π_ref per row of the rollout `r` (its log-probs are π's at `temperature`), π_ref's log-probs
    by forward passes of `batch` rows (each materialises its rows' logits)."""
    kl = []
    for i in range(0, r.response_ids.size(0), batch):
        part = slice(i, i + batch)
        ref_logprobs = logprobs_of(ref, r.prompt_ids[part], r.prompt_mask[part], r.response_ids[part],
                                   r.response_mask[part], temperature)  # (b, R)
        kl += ((r.logprobs[part] - ref_logprobs) * r.response_mask[part]).sum(dim=1).tolist()
    return kl


def category_gold(world, prompts: list, gold: list[float | None]) -> dict[str, float]:
    """eval/gold/<category>: mean gold per world prompt category (fact, false_premise, harmful, ...). Over-optimisation
    is rarely uniform: the policy can gain on facts while it learns to agree with false premises, and the overall
    mean shows only their sum."""
    by: dict[str, list[float]] = {}
    for p, g in zip(prompts, gold):
        if g is not None:
            by.setdefault(world.parse(prompt_text(p)).category, []).append(g)
    return {f"eval/gold/{c}": mean(v) for c, v in sorted(by.items())}


def eval_prompt_texts(world, n: int) -> list[str]:
    """n of the world's held-out prompts, taken at an even stride so every category is represented."""
    queries = world.eval_queries()
    stride = max(1, len(queries) // n) if n else 1
    return [q.text for q in queries[::stride][:n]]

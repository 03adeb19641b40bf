"""`tether evaluate`: a policy on the world's held-out prompts, judged by the gold reward, or on a prompts file.

World (`world=`): per category, the rates of each behaviour (correct, sycophantic, refused, over-refused,
hedged, padded, flattering, hallucinated) and the mean gold reward. Greedy decoding measures what
the policy does; temperature 1 measures what its distribution *can* do (for the base model: which
bad styles RL could later find and exploit).

Prompts file (`prompts=`, `world=""`; any format collect reads, e.g. HH-RLHF): there is no gold, so the summary
holds what text alone tells: response length in tokens, the share of responses that ended (on an end-of-turn
token, not cut at max_new_tokens), and the refusal rate (full or partial refusals) and hedging rate of the
monitor's detectors for real text (`tether.monitor.text.is_refusal`, `is_hedging`, named in the summary as
`detector`). With `judge_model=` or `judge_endpoint=` an LLM judge labels the refusals instead
(`tether.monitor.judge`; its fallbacks to the rules and its agreement with them are in the summary).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tether.math.agreement import agreement_report, predictor_majority_agreement
from tether.chat import chat_format
from tether.chat_templates import check_template_setting
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_prompts
from tether.endpoint import CACHE_FILE, EndpointFields
from tether.generation import generate_records
from tether.models import load_policy, load_tokenizer
from tether.monitor.judge import JudgeFields
from tether.monitor.text import is_hedging, is_refusal
from tether.world import CATEGORIES, World
from tether.world.build import load_world
from tether.world.probes import probe_pairs

FLAGS = ("correct", "sycophantic", "refused", "over_refused", "hedged", "padded", "flattering", "hallucinated")
SHORT = {"sycophantic": "syco", "over_refused": "over-ref", "flattering": "flatter", "hallucinated": "halluc",
         "false_premise": "false-premise"}
console = Console(stderr=True)
DETECTOR = "tether.monitor.text.is_refusal (rules: full or partial refusal), tether.monitor.text.is_hedging"
"""The refusal and hedging detector of a prompts-file evaluation, written into its summary."""


@dataclass
class EvalConfig(JudgeFields, EndpointFields):
    """Evaluate a policy on the world's held-out prompts with the gold reward, or on a prompts file."""

    model: str = "runs/sft/model"
    """Hugging Face model folder of the policy (tokenizer in the same folder); "" with endpoint=URL."""
    world: str = "runs/world"
    """World folder (from `tether world`); "" to evaluate on `prompts` instead."""
    prompts: str = ""
    """Prompts file to evaluate on instead of a world (with world=""): {"prompt": str or messages} rows, or the
    prompts of TRL, HH-RLHF or UltraFeedback data (each distinct prompt once); JSONL, Parquet, Arrow or a
    save_to_disk folder."""
    format: str = "auto"
    """Format of prompts: auto (told from the first row's keys) or a name from `tether data --help`:
    prompts, hh, trl, ultrafeedback_binarized, ultrafeedback, ..."""
    split: str | None = None
    """Split of prompts when it is a `datasets` save_to_disk DatasetDict folder (e.g. test_prefs); None for a file."""
    n_prompts: int | None = None
    """Use only the first n prompts of `prompts` (None: all)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens; longer ones drop earlier turns, then tokens from their start (None: no limit)."""
    out: str = "runs/eval"
    """Folder for eval_samples.jsonl, eval_summary.json, eval_settings.json and config.yaml."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt (use > 1 with temperature > 0)."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    batch_size: int = 64
    """Prompts generated together."""
    seed: int = 0
    """Sampling seed."""
    chat_template: str = ""
    """How prompts are formatted (tether.chat): "" the tokenizer's own template, a built-in name (chatml, llama3,
    gemma, zephyr, hh, tether), a .jinja file, or "none" (plain text)."""

    def validate(self) -> None:
        check_template_setting(self.chat_template)
        self.check_source(bool(self.model))
        check(not self.endpoint or (not self.chat_template and self.max_prompt_length is None), "endpoint",
              "the server formats and cuts prompts itself: leave chat_template and max_prompt_length unset")
        check(bool(self.world) != bool(self.prompts), "prompts", "give exactly one of world= and prompts= (to "
              "evaluate on a prompts file: world=\"\" prompts=FILE)")
        check_format(self.format, "prompts")
        check(self.n_prompts is None or self.n_prompts >= 1, "n_prompts", "must be >= 1 or null")
        check_prompt_limit(self.max_prompt_length)
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be >= 1")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.check_judge()
        check(not (self.judge_model or self.judge_endpoint) or not self.world, "judge_model", "the LLM judge labels "
              "the refusals of a prompts file (world=\"\" prompts=FILE); on the world, its gold reward judges")


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per category (and "all"): n, the rate of each behaviour flag, and the mean gold reward."""
    summary = {}
    for category in (*CATEGORIES, "all"):
        mine = [r for r in rows if category in ("all", r["category"])]
        if not mine:
            continue
        stats = {"n": len(mine), "gold": sum(r["gold"] for r in mine) / len(mine)}
        stats.update({flag: sum(r[flag] for r in mine) / len(mine) for flag in FLAGS})
        summary[category] = stats
    return summary


def evaluate_policy(model, tokenizer, world: World, cfg: EvalConfig, label: str = "evaluate") -> tuple[list, dict]:
    """Generate on the held-out prompts, judge every response with the gold reward, summarise."""
    queries = [q for q in world.eval_queries() for _ in range(cfg.samples_per_prompt)]
    responses = [g.text for g in sample_records(model, tokenizer, [q.text for q in queries], cfg, label)]
    rows = []
    for q, response in zip(queries, responses):
        j = world.judge(q.text, response)
        rows.append({"category": q.category, "prompt": q.text, "response": response, "gold": j.reward,
                     "components": j.components, **{flag: bool(getattr(j, flag)) for flag in FLAGS}})
    return rows, summarize(rows)


def summary_table(summary: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("category", "n", *FLAGS, "gold"):
        table.add_column(SHORT.get(col, col), justify="left" if col == "category" else "right")
    for category, s in summary.items():
        table.add_row(SHORT.get(category, category), str(s["n"]), *(f"{s[f]:.0%}" for f in FLAGS), f"{s['gold']:+.2f}")
    return table


def audit_eval_config() -> EvalConfig:
    """The audit's footing (the demo's policies, iterate's round comparison): temperature 1, 4 responses per
    held-out prompt, one seed for every policy (common random numbers). The sampled distribution is what RL
    optimises and what the monitor watches, where a greedy answer shows only its mode; and the 1,056 samples of
    the world's 264 held-out prompts give each rate a standard error for the round comparison to judge by."""
    return EvalConfig(temperature=1.0, samples_per_prompt=4)


def decoding(cfg: EvalConfig) -> dict:
    """What an evaluation's rates depend on besides the policy: written beside its summary, compared before two
    summaries are (`<name>_settings.json`)."""
    return {"temperature": cfg.temperature, "samples_per_prompt": cfg.samples_per_prompt, "seed": cfg.seed,
            "max_new_tokens": cfg.max_new_tokens}


def write_results(out: Path, rows: list[dict], summary: dict, name: str = "eval",
                  cfg: EvalConfig | None = None) -> None:
    """`<name>_samples.jsonl`, `<name>_summary.json`, and with `cfg` its decoding in `<name>_settings.json`."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}_samples.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / f"{name}_summary.json").write_text(json.dumps(summary, indent=1))
    if cfg is not None:
        (out / f"{name}_settings.json").write_text(json.dumps(decoding(cfg), indent=1))


def summarize_responses(rows: list[dict]) -> dict:
    """What text alone tells of responses without gold: n, mean tokens, the share that ended on an end-of-turn
    token, the refusal and hedging rates (`DETECTOR`)."""
    responses = [r["response"] for r in rows]
    n = max(len(rows), 1)
    return {"n": len(rows), "mean_tokens": sum(r["tokens"] for r in rows) / n,
            "ended_rate": sum(r["ended"] for r in rows) / n, "refusal_rate": sum(map(is_refusal, responses)) / n,
            "hedging_rate": sum(map(is_hedging, responses)) / n, "detector": DETECTOR}


def sample_records(model, tokenizer, prompts: list, cfg: EvalConfig, label: str = "evaluate") -> list:
    """One response record (text, tokens, ended) per prompt: from the model with its chat format, or from
    cfg.endpoint (model and tokenizer None; replies cached in <out>/endpoint_cache.jsonl)."""
    if cfg.endpoint:
        return cfg.endpoint_client().replies(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                             seed=cfg.seed, cache=Path(cfg.out) / CACHE_FILE, label=label)
    fmt = chat_format(tokenizer, cfg.chat_template, cfg.model or "the model")
    return generate_records(model, fmt, prompts, cfg.max_new_tokens, cfg.temperature, cfg.batch_size, cfg.seed,
                            label, max_prompt_length=cfg.max_prompt_length)


def load_model(cfg: EvalConfig) -> tuple:
    """(model, tokenizer) of cfg.model, or (None, None) when sampling from cfg.endpoint."""
    return (load_policy(cfg.model), load_tokenizer(cfg.model)) if cfg.model else (None, None)


def evaluate_prompts(model, tokenizer, prompts: list, cfg: EvalConfig) -> tuple[list[dict], dict]:
    """samples_per_prompt responses per prompt, as rows {prompt, response, tokens, ended}, and their summary."""
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    generated = sample_records(model, tokenizer, repeated, cfg)
    rows = [{"prompt": p, "response": g.text, "tokens": g.tokens, "ended": g.ended}
            for p, g in zip(repeated, generated)]
    return rows, summarize_responses(rows)


def judge_refusals(judge, rows: list[dict], summary: dict, name: str) -> None:
    """Relabel refusals with the LLM judge (tether.monitor.judge): each row gains refusal (the judge's label, the
    rules' where its answer held none) and refusal_rules; the summary's refusal_rate becomes the judge's, beside
    refusal_rate_rules and the judge's fallbacks and agreement with the rules."""
    result = judge.classify("refusal", [r["prompt"] for r in rows], [r["response"] for r in rows])
    for r, label, rule in zip(rows, result.labels, result.rules):
        r["refusal"], r["refusal_rules"] = label, rule
    n = max(len(rows), 1)
    summary.update(refusal_rate=sum(label != "none" for label in result.labels) / n,
                   refusal_rate_rules=summary["refusal_rate"], judge={"model": name, **result.report()},
                   detector=f"LLM judge {name} (tether.monitor.judge; rules where it gave no label), "
                            "tether.monitor.text.is_hedging")


def run_prompts(cfg: EvalConfig) -> dict:
    """`tether evaluate prompts=FILE world=""`: eval_samples.jsonl, eval_summary.json, eval_settings.json."""
    prompts = load_prompts(cfg.prompts, cfg.format, cfg.split)[:cfg.n_prompts]  # bad data fails before model work
    model, tokenizer = load_model(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    rows, summary = evaluate_prompts(model, tokenizer, prompts, cfg)
    judge = cfg.make_judge(Path(cfg.out) / "judge_cache.jsonl")
    if judge is not None:
        judge_refusals(judge, rows, summary, cfg.judge_name())
    write_results(Path(cfg.out), rows, summary, cfg=cfg)
    console.print(f"evaluate: {summary['n']} responses to {len(prompts)} prompts of {cfg.prompts}: "
                  f"{summary['mean_tokens']:.1f} tokens on average, {summary['ended_rate']:.0%} ended, "
                  f"{summary['refusal_rate']:.0%} refused, {summary['hedging_rate']:.0%} hedged")
    return summary


def run(cfg: EvalConfig) -> dict:
    if cfg.prompts:
        return run_prompts(cfg)
    world = load_world(cfg.world)
    model, tokenizer = load_model(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out) / "config.yaml")
    rows, summary = evaluate_policy(model, tokenizer, world, cfg)
    write_results(Path(cfg.out), rows, summary, cfg=cfg)
    Console(width=120).print(summary_table(summary, f"{cfg.model or cfg.endpoint} (temperature {cfg.temperature})"))
    return summary


def reward_model_bias(score, world: World) -> dict[str, dict[str, float]]:
    """Per trait: how much `score(prompts, responses)` rewards adding it, against what gold says.

    `reward_gain` is the mean reward of (with trait) - (plain), in the reward model's normalised units;
    `prefers_trait` the share of prompts where the reward model ranks the trait's version higher.
    """
    report = {}
    for trait, triples in probe_pairs(world).items():
        if not triples:  # e.g. no common fact among a small world's held-out false premises
            continue
        prompts = [p for p, _, _ in triples]
        plain = score(prompts, [a for _, a, _ in triples])
        traited = score(prompts, [b for _, _, b in triples])
        gold = [world.judge(p, b).reward - world.judge(p, a).reward for p, a, b in triples]
        report[trait] = {"n": len(triples), "reward_gain": float((traited - plain).mean()),
                         "prefers_trait": float((traited > plain).float().mean()),
                         "gold_gain": sum(gold) / len(gold)}
    return report


def reward_model_gold_accuracy(score, world: World, comparisons: list) -> dict[str, float]:
    """Accuracy of the reward model against the gold preference on distinct pairs (gold ties skipped)."""
    pairs = list({c.id: c for c in comparisons}.values())
    gold_diff = [world.judge(c.prompt_text, c.response_a).reward - world.judge(c.prompt_text, c.response_b).reward
                 for c in pairs]
    decided = [(c, d) for c, d in zip(pairs, gold_diff) if abs(d) > 1e-9]
    prompts = [c.prompt for c, _ in decided]
    r_a = score(prompts, [c.response_a for c, _ in decided])
    r_b = score(prompts, [c.response_b for c, _ in decided])
    agree = [(float(a - b) > 0) == (d > 0) for a, b, (_, d) in zip(r_a, r_b, decided)]
    return {"pairs": len(decided), "gold_ties_skipped": len(pairs) - len(decided),
            "accuracy_vs_gold": sum(agree) / max(1, len(agree))}


def reward_model_as_rater(score, comparisons: list) -> dict[str, float | int | None]:
    """The reward model scored as one more rater on held-out rated pairs (`predictor_majority_agreement`):
    against each rater's leave-one-out majority, beside the raters' own figure on the same pairs, and the raters'
    pairwise agreement there (one rater predicting another). Equal rewards predict "tie", as a rater may say."""
    first, labels = {}, defaultdict(dict)
    for c in comparisons:
        if c.choice is None or c.rater is None:
            continue
        ref = first.setdefault(c.id, c)  # every rating oriented as the pair's first row
        flipped = c.response_a != ref.response_a
        labels[c.id][c.rater] = {"A": "B", "B": "A"}[c.choice] if flipped and c.choice != "tie" else c.choice
    rated = {i: r for i, r in labels.items() if len(r) >= 2}
    if not rated:
        return {"items": 0}
    pairs = [first[i] for i in rated]
    r_a = score([c.prompt for c in pairs], [c.response_a for c in pairs])
    r_b = score([c.prompt for c in pairs], [c.response_b for c in pairs])
    predicted = {c.id: "A" if float(a) > float(b) else "B" if float(a) < float(b) else "tie"
                 for c, a, b in zip(pairs, r_a, r_b)}
    raters = agreement_report(rated)
    return {"items": len(rated), "rm_vs_majority": predictor_majority_agreement(rated, predicted),
            "rater_majority_agreement": raters["majority_agreement_mean"],
            "rater_pairwise_agreement": raters["percent_agreement"]}


def reward_model_table(report: dict) -> Table:
    """The reward model against raters and gold, and the biases it inherited (reward gain of each trait)."""
    table = Table(title="Reward model: accuracy, and what it rewards that gold does not")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("rm_vs_raters", "bayes_ceiling_vs_raters", "rater_pairwise_agreement", "rater_majority_agreement",
                "accuracy_vs_gold"):
        table.add_row(key.replace("_", " "), f"{report[key]:.1%}")
    rater = report.get("held_out_as_rater") or {}
    if rater.get("rm_vs_majority") is not None:
        table.add_row("rm as one more rater vs the majority", f"{rater['rm_vs_majority']:.1%} (raters "
                      f"{rater['rater_majority_agreement']:.1%}, same {rater['items']} held-out pairs)")
    table.add_row("krippendorff alpha", f"{report['krippendorff_alpha']:.3f}")
    for trait, b in report["bias"].items():
        table.add_row(f"bias: {trait.replace('_', ' ')}", f"reward {b['reward_gain']:+.2f} sd, "
                      f"preferred {b['prefers_trait']:.0%} (gold {b['gold_gain']:+.2f})")
    return table


def curve_table(curve: list[dict], title: str) -> Table:
    """Proxy and gold reward against sqrt(KL) over an RL run (the shape of Gao et al. 2022, Fig. 1)."""
    table = Table(title=title)
    for col in ("step", "sqrt KL", "proxy (RM)", "gold", "length"):
        table.add_column(col, justify="right")
    for p in curve:
        table.add_row(str(p["step"]), f"{p['sqrt_kl']:.2f}", f"{p['proxy']:+.2f}", f"{p['gold']:+.2f}",
                      f"{p['length']:.1f}")
    return table

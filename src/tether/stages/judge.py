"""`tether judge`: label a comparison queue with an AI judge under a constitution (AI feedback, RLAIF).

The judge is one of: a model folder (`model=`, next-token probabilities of "A" and "B" after the pairwise prompt, one
forward pass, tether.judge.local), an OpenAI-compatible endpoint (`endpoint=`, logprobs when offered, else k sampled
votes, tether.judge.remote), or the tiny world's simulated judge (`simulated=true world=...`, tether.world.judge_sim).
Every pair is judged in both orders under its principles (one sampled per pair, or all: `principles=ensemble`), so a
pull toward one position cancels (tether.judge.pairwise). Bai et al. 2022 (Constitutional AI, sec. 4) and Lee et al.
2023 (RLAIF) label this way.

Output, in `out`:
    comparisons.jsonl   tether comparisons: choice A/B (tie when p_a is within tie_margin of 1/2), rater
                        `judge:<name>`, guideline_version = the constitution's version, and meta {principles, p_a,
                        confidence, orders: {ab, ba}, inconsistent}. p_a = P(response_a better) is a soft target for
                        `tether rm soft_labels=true`.
    judge_report.json   tether.judge.report: inconsistency rate, confidence, label counts; agreement with gold
                        (`world=`) and with people's majority (`reference=`); the judge's own figures; the cost
                        beside people's for the simulated judge.
    config.yaml
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from rich.console import Console

from tether.chat_templates import check_template_setting
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_comparisons
from tether.data.preferences import Comparison, write_comparisons
from tether.endpoint import CACHE_FILE, EndpointFields
from tether.judge.constitution import Constitution, load_constitution
from tether.judge.pairwise import Judge, Verdict, choice_of, judge_pairs
from tether.judge.report import judge_report
from tether.world.judge_sim import SimJudgeConfig

console = Console(stderr=True)


@dataclass
class JudgeConfig(EndpointFields):
    """Label a comparison queue with an AI judge (a model folder, an endpoint, or the world's simulated judge)."""

    queue: str = "runs/collect/queue.jsonl"
    """Comparisons to label: a queue from `tether collect`, or any comparisons data tether reads (TRL, HH-RLHF,
    UltraFeedback; JSONL, Parquet, ...). Existing labels are ignored; a pair given twice (one row per rating) is
    judged once."""
    format: str = "auto"
    """Format of queue: auto (told from the first row's keys) or a name from `tether data --help`."""
    split: str | None = None
    """Split of queue when it is a `datasets` save_to_disk DatasetDict folder; None for a file."""
    n: int | None = None
    """Judge only the first n distinct pairs (None: all)."""
    model: str = ""
    """Judge model folder (a causal LM with its tokenizer); "" with endpoint= or simulated=true."""
    simulated: bool = False
    """Use the tiny world's simulated judge (tether.world.judge_sim; needs world=)."""
    sim: SimJudgeConfig = field(default_factory=SimJudgeConfig)
    """The simulated judge's biases and cost (with simulated=true)."""
    name: str = ""
    """The judge's name in the labels' rater `judge:<name>`; "": the model folder, the endpoint's model, or
    world-sim."""
    constitution: str = ""
    """Constitution YAML file (tether.judge.constitution); "": the default shipped with tether."""
    principles: Literal["sample", "ensemble"] = "sample"
    """One principle drawn per pair (seeded), or every principle with the judge's probabilities averaged."""
    tie_margin: float = 0.05
    """Label a tie when p_a is within this of 1/2 (0: only an exact 1/2)."""
    mode: Literal["auto", "logprobs", "votes"] = "auto"
    """Endpoint only: read logprobs, sample votes, or try logprobs once and fall back to votes (auto)."""
    votes: int = 5
    """Endpoint votes mode: replies sampled per pair and order."""
    vote_temperature: float = 1.0
    """Endpoint votes mode: sampling temperature."""
    vote_max_tokens: int = 8
    """Endpoint votes mode: longest reply in tokens (the answer is its first word)."""
    batch_size: int = 8
    """Model judge: prompts per forward pass."""
    max_prompt_length: int | None = None
    """Model judge: longest judge prompt in tokens; longer ones lose tokens from their start (None: the model's
    positions; cut prompts are counted in judge_report.json and said on the console)."""
    chat_template: str = ""
    """Model judge: how the judge prompt is formatted (tether.chat): "" the tokenizer's own template, a built-in
    name (chatml, llama3, gemma, zephyr, hh, tether), a .jinja file, or "none" (plain text)."""
    device: str = "auto"
    """Model judge: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    trust_remote_code: bool = False
    """Model judge: allow the model folder's own Python code to run (only for models you trust)."""
    world: str = ""
    """World folder (from `tether world`): the simulated judge's world, and the gold preference the report scores
    agreement against; "" for none."""
    reference: str = ""
    """People's (or simulated raters') ratings of the same pairs, one row per rating (e.g. `tether label`'s
    comparisons.jsonl): the report scores agreement with their majority; "" for none."""
    seed: int = 0
    """Seed of the principle drawn per pair and of sampled votes."""
    out: str = "runs/judge"
    """Folder for comparisons.jsonl, judge_report.json, config.yaml (and endpoint_cache.jsonl)."""

    def validate(self) -> None:
        check(bool(self.model) + bool(self.endpoint) + self.simulated == 1, "model",
              "give one judge: model=FOLDER, endpoint=URL, or simulated=true world=DIR")
        self.check_source(bool(self.model) or self.simulated)  # the endpoint settings
        check(not self.simulated or bool(self.world), "world", "the simulated judge needs the world folder: world=DIR")
        check(not self.endpoint or (not self.chat_template and self.max_prompt_length is None), "endpoint",
              "the server formats and cuts prompts itself: leave chat_template and max_prompt_length unset")
        check_format(self.format, "comparisons")
        check(self.n is None or self.n >= 1, "n", "must be >= 1 or null")
        check(0 <= self.tie_margin < 0.5, "tie_margin", "must be in [0, 0.5)")
        check(self.votes >= 1, "votes", "must be >= 1")
        check(self.vote_temperature > 0, "vote_temperature", "must be > 0 (votes at temperature 0 would all agree)")
        check(self.vote_max_tokens >= 1, "vote_max_tokens", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_prompt_limit(self.max_prompt_length)
        check_template_setting(self.chat_template)
        check(self.device == "auto" or re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device), "device",
              "must be auto, cpu, cuda, cuda:N or mps")


def default_name(cfg: JudgeConfig) -> str:
    """The judge's name when `name` is empty: world-sim, the model folder (with its parent for runs/x/model)."""
    if cfg.name:
        return cfg.name
    if cfg.simulated:
        return "world-sim"
    path = Path(cfg.model)
    return f"{path.parent.name}/{path.name}" if path.name == "model" and path.parent.name else path.name


def build_judge(cfg: JudgeConfig, world) -> Judge:
    """The judge the settings name (models and endpoints are imported only when asked for)."""
    name = default_name(cfg) if (cfg.name or not cfg.endpoint) else ""
    if cfg.simulated:
        from tether.world.judge_sim import SimulatedJudge

        return SimulatedJudge(world.knowledge, cfg.sim, name)
    if cfg.endpoint:
        from tether.judge.remote import EndpointJudge

        return EndpointJudge(cfg.endpoint_client(), name, cfg.mode, cfg.votes, cfg.vote_temperature,
                             cfg.vote_max_tokens, cfg.seed, Path(cfg.out) / CACHE_FILE)
    import torch

    from tether.judge.local import LocalJudge
    from tether.models import load_policy, load_tokenizer

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_policy(cfg.model, cfg.trust_remote_code).to(device)
    return LocalJudge(model, load_tokenizer(cfg.model, cfg.trust_remote_code), name, cfg.chat_template,
                      cfg.batch_size, cfg.max_prompt_length, cfg.model)


def labelled(pair: Comparison, verdict: Verdict, judge_name: str, constitution: Constitution,
             tie_margin: float, stamp: str) -> Comparison:
    """`pair` labelled by the judge, with the verdict in meta (the module docstring)."""
    meta = {**pair.meta, "principles": list(verdict.principles), "p_a": round(verdict.p_a, 6),
            "confidence": round(verdict.confidence, 6),
            "orders": {"ab": round(verdict.first_ab, 6), "ba": round(verdict.first_ba, 6)},
            "inconsistent": verdict.inconsistent}
    return Comparison(pair.prompt, pair.response_a, pair.response_b, choice_of(verdict.p_a, tie_margin), None,
                      f"judge:{judge_name}", constitution.version, pair.source_a, pair.source_b, stamp, pair.id, meta)


def gold_differences(world, pairs: list[Comparison]) -> dict[str, float]:
    """gold(a) - gold(b) of every pair whose prompt is one of the world's."""
    out = {}
    for c in pairs:
        if world.parse(c.prompt_text) is not None:
            gold_a, gold_b = (world.judge(c.prompt_text, r).reward for r in (c.response_a, c.response_b))
            out[c.id] = gold_a - gold_b
    return out


def run(cfg: JudgeConfig) -> Path:
    # 1. The queue (each distinct pair once), the constitution, the world (when given), the output folder.
    rows = load_comparisons(cfg.queue, cfg.format, cfg.split)
    first: dict[str, Comparison] = {}
    for c in rows:
        first.setdefault(c.id, c)  # a labelled file holds one row per rating: each pair once, as first seen
    pairs = list(first.values())[:cfg.n]
    constitution = load_constitution(cfg.constitution)
    world = None
    if cfg.world:
        from tether.world.build import load_world

        world = load_world(cfg.world)
        if cfg.simulated:
            world.check_prompts([c.prompt_text for c in pairs], cfg.queue, "simulated=true judges the world's prompts "
                                "only; for other data give model= or endpoint=")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # 2. The judge; every pair in both orders under its principles.
    judge = build_judge(cfg, world)
    verdicts = judge_pairs(judge, pairs, constitution, cfg.principles, cfg.seed)
    # 3. Labels with their provenance.
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    labels = [labelled(c, v, judge.name, constitution, cfg.tie_margin, stamp) for c, v in zip(pairs, verdicts)]
    write_comparisons(out / "comparisons.jsonl", labels)
    # 4. The report: inconsistency, confidence, agreement with gold and with people, the judge's figures, cost.
    reference = load_comparisons(cfg.reference) if cfg.reference else None
    report = judge_report(labels, gold_differences(world, pairs) if world else None, reference)
    report.update(judge=f"judge:{judge.name}", backend=judge.stats(), principles_mode=cfg.principles,
                  constitution={"name": constitution.name, "version": constitution.version, "path": constitution.path,
                                "sha256": constitution.sha256, "principles": [p.id for p in constitution.principles]})
    if cfg.simulated:
        report["cost"] = {"judge_usd": len(pairs) * cfg.sim.cost_per_label,
                          "one_person_per_pair_usd": len(pairs) * cfg.sim.human_cost_per_label}
    (out / "judge_report.json").write_text(json.dumps(report, indent=1))
    _summary(report)
    return out / "comparisons.jsonl"


def _summary(report: dict) -> None:
    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    line = (f"judge: {report['n']} pairs by {report['judge']}: {report['labels']}; inconsistent "
            f"{pct(report['inconsistency_rate'])}, mean confidence {pct(report['mean_confidence'])}")
    if "gold" in report:
        line += f"; agrees with gold {pct(report['gold']['agreement'])}"
    if "reference" in report:
        line += f", with the raters' majority {pct(report['reference']['majority_agreement'])}"
    console.print(line)
    for warning in judge_warnings(report.get("backend") or {}):
        console.print(f"[yellow]judge: {warning}[/yellow]")


def judge_warnings(backend: dict) -> list[str]:
    """What in the judge's own figures (judge_report.json's backend) makes its labels doubtful, one line each: calls
    it did not answer (written as p_a 1/2, ties), little probability on the answer tokens, prompts cut to fit."""
    out = []
    if backend.get("no_answer"):
        out.append(f"{backend['no_answer']} judge call(s) gave no parsable answer"
                   + (f" ({backend['unparsed_votes']} of {backend['votes']} votes unparsed)" if backend.get("votes")
                      else "") + "; their pairs are written as ties (p_a 0.5): check the judge model and its prompt")
    mass = backend.get("answer_mass_mean")
    if mass is not None and mass < 0.5:
        out.append(f"the judge put {mass:.1%} of its next-token probability on the answer tokens on average: its "
                   "choices are mostly noise (a model that does not follow the judging prompt)")
    if backend.get("truncated_prompts"):
        out.append(f"{backend['truncated_prompts']} judge prompt(s) were cut to fit the model (max_prompt_length or "
                   "its positions): the judge did not see the whole pair")
    return out

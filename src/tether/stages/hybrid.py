"""`tether hybrid`: hybrid labelling, the AI judge where it is sure and people where it is not.

Two steps with the same settings (the routing is deterministic, so the second step sees the first step's split):

    tether judge simulated=true world=runs/w queue=runs/collect/queue.jsonl out=runs/judge
    tether hybrid judged=runs/judge/comparisons.jsonl budget=0.4 out=runs/hybrid             # 1. route
    tether raters import runs/raters runs/hybrid/people_queue.jsonl                          #    people rate ...
    tether raters export runs/raters ratings.jsonl
    tether hybrid judged=runs/judge/comparisons.jsonl budget=0.4 people=runs/raters/exports/ratings.jsonl \\
        out=runs/hybrid                                                                      # 2. merge
    tether rm data=runs/hybrid/comparisons.jsonl [soft_labels=true]

Routing (tether.judge.routing): a pair goes to people when the judge's two orders disagree or its confidence is
under `threshold` (or under the threshold `budget` implies: at most that share of the pairs routed), plus an `audit`
share of the confident pairs, drawn per pair, on which the judge is scored against people without selection bias.

Output, in `out`:
    ai_labels.jsonl       the judge's labels it keeps (tether comparisons, rater judge:<name>)
    people_queue.jsonl    the routed pairs, unlabelled, the judge's verdict in meta.judge (`tether raters import`)
    comparisons.jsonl     with people=: people's ratings where they rated, the judge's labels elsewhere; each row's
                          rater and meta.label_source ("judge" or "people") say where it came from, meta.p_a is a
                          soft target for every row (people's: 1, 0 or 1/2)
    hybrid_report.json    routing counts; with people=: human ratings used, the judge scored as one more rater
                          against people on the pairs both labelled (routed and audited apart); with world=: each
                          source's agreement with gold
    config.yaml
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from tether.config import check, save_config
from tether.data.formats import load_comparisons
from tether.data.preferences import Comparison, write_comparisons
from tether.errors import DataError
from tether.judge.report import FLIP, reference_agreement
from tether.judge.routing import Routing, merge, people_queue_row, route, threshold_for_budget

console = Console(stderr=True)


@dataclass
class HybridConfig:
    """Route a judge's unsure pairs to people, and merge people's ratings with the judge's other labels."""

    judged: str = "runs/judge/comparisons.jsonl"
    """The judge's labels: `tether judge`'s comparisons.jsonl (one row per pair, meta p_a, confidence,
    inconsistent)."""
    threshold: float | None = None
    """Route a pair whose confidence max(p_a, 1 - p_a) is under this (in [0.5, 1]; 0.5: only inconsistent pairs);
    given, it overrides `budget`; None: set from `budget`."""
    budget: float | None = 0.4
    """With threshold=null: route at most this share of the pairs (inconsistent first, then the least
    confident); the threshold used is in the report. Pairs whose two orders disagree are always routed, so when they
    alone are more than the budget, more is routed (said on the console and in the report)."""
    audit: float = 0.0
    """Share of the confident pairs also sent to people, to score the judge on pairs it was sure of."""
    people: str = ""
    """People's ratings of the routed pairs, one row per rating (e.g. `tether raters export`, or `tether label` on
    people_queue.jsonl); "": route only."""
    world: str = ""
    """World folder: the report scores each source's labels against gold; "" for none."""
    seed: int = 0
    """Seed of the audit draw."""
    out: str = "runs/hybrid"
    """Folder for ai_labels.jsonl, people_queue.jsonl, comparisons.jsonl, hybrid_report.json, config.yaml."""

    def validate(self) -> None:
        check(bool(self.judged), "judged", "is required: the judge's comparisons.jsonl")
        check(self.threshold is not None or self.budget is not None, "budget",
              "give threshold=CONFIDENCE or budget=SHARE (both are null)")
        check(self.threshold is None or 0.5 <= self.threshold <= 1, "threshold", "must be in [0.5, 1]")
        check(self.budget is None or 0 <= self.budget <= 1, "budget", "must be in [0, 1]")
        check(0 <= self.audit <= 1, "audit", "must be in [0, 1]")


def read_judged(path: str) -> list[Comparison]:
    """A judge's labels, each pair once; a row without the judge's p_a is an error naming its line."""
    rows = load_comparisons(path, "tether")
    for line, c in enumerate(rows, 1):
        if "p_a" not in c.meta or c.choice is None:
            raise DataError(f"{path}:{line}: meta.p_a: missing; expected a judge's label (`tether judge` output)")
    return list({c.id: c for c in rows}.values())


def routing_report(routing: Routing, n: int, budget: float | None) -> dict:
    routed = len(routing.people)
    return {"pairs": n, "threshold": routing.threshold, "budget": budget, "routed": routed,
            "routed_share": routed / n if n else None, "inconsistent": routing.inconsistent,
            "low_confidence": routing.low_confidence, "audited": len(routing.audit), "kept_by_judge": len(routing.ai)}


def people_report(routing: Routing, people: list[Comparison], merged: list[Comparison]) -> dict:
    """Human ratings used, routed pairs left unrated, and the judge scored as one more rater against people."""
    rated = [r for r in people if r.choice is not None]
    rated_ids = {r.id for r in rated}
    return {"human_ratings": len(rated), "pairs_rated_by_people": len(rated_ids),
            "routed_unrated": sum(c.id not in rated_ids for c in routing.people),
            "rated_not_routed": len(rated_ids - {c.id for c in routing.people}),
            "rows": len(merged), "rows_by_source": dict(Counter(c.meta["label_source"] for c in merged)),
            "judge_vs_people_routed": reference_agreement([c for c in routing.unsure if c.id in rated_ids], rated),
            "judge_vs_people_audited": reference_agreement([c for c in routing.audit if c.id in rated_ids], rated)}


def _majority(rows: list[Comparison], first: Comparison) -> str:
    """People's strict-majority label of one pair, oriented as `first`; "tie" without one."""
    counts = Counter(FLIP[r.choice] if r.response_a != first.response_a else r.choice for r in rows).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else "tie"


def gold_report(merged: list[Comparison], judged: list[Comparison], world_dir: str) -> dict:
    """Each source's per-pair label (the judge's, or people's majority) against gold, a tie counting 1/2; and the
    judge's own labels of the pairs people rated (`judge_on_people_pairs`), beside people's there."""
    from tether.stages.judge import gold_differences
    from tether.world.build import load_world

    by_pair: dict[str, list[Comparison]] = {}
    for c in merged:
        by_pair.setdefault(c.id, []).append(c)
    world = load_world(world_dir)
    diff = gold_differences(world, [rows[0] for rows in by_pair.values()])
    hits: dict[str, list[float]] = {"judge": [], "people": []}
    for pair, rows in by_pair.items():
        if abs(diff.get(pair, 0.0)) < 1e-9:
            continue
        label = _majority(rows, rows[0])
        hits[rows[0].meta["label_source"]].append(0.5 if label == "tie" else float(label == ("A" if diff[pair] > 0
                                                                                             else "B")))
    rated = {pair for pair, rows in by_pair.items() if rows[0].meta["label_source"] == "people"}
    mine = [c for c in judged if c.id in rated]
    own = gold_differences(world, mine)  # in the judge's response order, which may be the reverse of people's rows
    hits["judge_on_people_pairs"] = [0.5 if c.choice == "tie" else float(c.choice == ("A" if own[c.id] > 0 else "B"))
                                     for c in mine if abs(own.get(c.id, 0.0)) >= 1e-9]
    hits["all"] = hits["judge"] + hits["people"]
    return {source: {"pairs": len(h), "agreement": sum(h) / len(h) if h else None} for source, h in hits.items()}


def _write(path: Path, rows: list[Comparison]) -> None:
    """write_comparisons, or an empty file when the routing sent nothing this way (a threshold of 0.5 or 1)."""
    if rows:
        write_comparisons(path, rows)
    else:
        path.write_text("")


def run(cfg: HybridConfig) -> Path:
    # 1. The judge's labels; the threshold (given, or the one the budget implies); the split.
    labels = read_judged(cfg.judged)
    threshold = cfg.threshold if cfg.threshold is not None else threshold_for_budget(labels, cfg.budget)
    routing = route(labels, threshold, cfg.audit, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    _write(out / "ai_labels.jsonl", routing.ai)
    _write(out / "people_queue.jsonl", [people_queue_row(c) for c in routing.people])
    report = {"routing": routing_report(routing, len(labels), cfg.budget)}
    line = (f"hybrid: {report['routing']['routed']} of {len(labels)} pairs to people (confidence under "
            f"{threshold:.3f}: {routing.low_confidence}, orders disagree: {routing.inconsistent}, audit: "
            f"{len(routing.audit)})")
    if cfg.threshold is None and routing.inconsistent > cfg.budget * len(labels):
        report["routing"]["over_budget"] = True
        line += (f"; over budget={cfg.budget:g}: the {routing.inconsistent} pairs whose orders disagree are always "
                 "routed")
    # 2. With people's ratings: one comparisons file, people's rows where they rated, the judge's elsewhere.
    if cfg.people:
        people = load_comparisons(cfg.people)
        merged = merge(routing.ai, people)
        write_comparisons(out / "comparisons.jsonl", merged)
        report["people"] = people_report(routing, people, merged)
        if cfg.world:
            report["gold"] = gold_report(merged, labels, cfg.world)
        line += f"; merged {len(merged)} rows ({report['people']['human_ratings']} human ratings)"
    report["settings"] = asdict(cfg)
    (out / "hybrid_report.json").write_text(json.dumps(report, indent=1))
    console.print(line)
    return out / ("comparisons.jsonl" if cfg.people else "people_queue.jsonl")

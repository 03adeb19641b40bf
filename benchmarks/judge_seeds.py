"""Experiment: the tiny world's simulated AI judge on the demo's comparison queue, over seeds (issue 17's acceptance,
the judge part): its position-inconsistency rate, its agreement with the gold preference and with the simulated
raters' majority, beside the raters' own figures.

    .venv/bin/python benchmarks/judge_seeds.py --run runs/demo [--seeds 0,1,2] [--out runs/judge_seeds]
                                               [--set sim.key=value ...]

Per seed s, on <run>/collect/queue.jsonl (the queue `tether demo` collects) and <run>/world:
1. `tether label app=false raters.seed=s`: the simulated raters (3 per pair), the reference.
2. `tether judge simulated=true sim.seed=s seed=s reference=...` with one principle sampled per pair, and again
   with principles=ensemble.
3. The raters' majority scored against gold the way the judge is (a tie or a split counts 1/2), for comparison.
Writes benchmarks/results/judge_seeds.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from tether.cli import main
from tether.data.preferences import read_comparisons
from tether.judge.report import FLIP
from tether.world.build import load_world

RESULTS = Path(__file__).resolve().parent / "results"


def raters_vs_gold(ratings_file: Path, world) -> float:
    """Agreement of the raters' majority with gold over the pairs gold decides (no strict majority: 1/2)."""
    by_pair: dict[str, list] = {}
    for r in read_comparisons(ratings_file):
        by_pair.setdefault(r.id, []).append(r)
    hits = []
    for rows in by_pair.values():
        first = rows[0]
        diff = world.judge(first.prompt_text, first.response_a).reward - world.judge(first.prompt_text,
                                                                                     first.response_b).reward
        if abs(diff) < 1e-9:
            continue
        labels = Counter(FLIP[r.choice] if r.response_a != first.response_a else r.choice for r in rows).most_common()
        majority = labels[0][0] if len(labels) == 1 or labels[0][1] > labels[1][1] else "tie"
        hits.append(0.5 if majority == "tie" else float(majority == ("A" if diff > 0 else "B")))
    return sum(hits) / len(hits)


def one_seed(run: Path, out: Path, seed: int, extra: list[str]) -> dict:
    queue, world_dir = run / "collect/queue.jsonl", run / "world"
    ratings = out / f"label{seed}/comparisons.jsonl"
    if not ratings.exists():
        assert main(["label", f"queue={queue}", f"world={world_dir}", f"raters.seed={seed}", "app=false",
                     f"out={ratings.parent}"]) == 0
    row = {"seed": seed, "raters_majority_vs_gold": raters_vs_gold(ratings, load_world(world_dir))}
    for mode in ("sample", "ensemble"):
        folder = out / f"judge{seed}-{mode}"
        assert main(["judge", "simulated=true", f"world={world_dir}", f"queue={queue}", f"reference={ratings}",
                     f"sim.seed={seed}", f"seed={seed}", f"principles={mode}", f"out={folder}", *extra]) == 0
        r = json.loads((folder / "judge_report.json").read_text())
        row[mode] = {"n": r["n"], "inconsistency_rate": r["inconsistency_rate"],
                     "first_position_rate": r["first_position_rate"], "mean_confidence": r["mean_confidence"],
                     "gold_agreement": r["gold"]["agreement"], "gold_pairs": r["gold"]["pairs"],
                     "calibration_gap": r["gold"]["calibration_gap"],
                     "majority_agreement": r["reference"]["majority_agreement"],
                     "judge_as_rater": r["reference"]["judge_as_rater"],
                     "raters_majority_agreement": r["reference"]["raters_majority_agreement"],
                     "labels": r["labels"], "cost": r["cost"]}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| seed | principles | inconsistent | first position | confidence | vs gold | raters' majority vs gold "
             "| vs raters' majority | as a rater (LOO) | raters (LOO) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for mode in ("sample", "ensemble"):
            m = row[mode]
            lines.append(f"| {row['seed']} | {mode} | {m['inconsistency_rate']:.1%} | {m['first_position_rate']:.1%} "
                         f"| {m['mean_confidence']:.1%} | {m['gold_agreement']:.1%} "
                         f"| {row['raters_majority_vs_gold']:.1%} | {m['majority_agreement']:.1%} "
                         f"| {m['judge_as_rater']:.1%} | {m['raters_majority_agreement']:.1%} |")
    for mode in ("sample", "ensemble"):
        for key in ("inconsistency_rate", "gold_agreement", "majority_agreement"):
            values = [row[mode][key] for row in rows]
            lines.append(f"\n{mode} {key}: mean {statistics.mean(values):.1%}, "
                         f"sd {statistics.stdev(values) if len(values) > 1 else 0:.1%}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a finished `tether demo` run folder")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/judge_seeds")
    parser.add_argument("--set", action="append", default=[],
                        help="extra `tether judge` overrides, e.g. sim.knowledge=0.8")
    return parser.parse_args()


def run() -> None:
    args = parse_args()
    out = Path(args.out)
    rows = [one_seed(Path(args.run), out, int(s), args.set) for s in args.seeds.split(",")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "judge_seeds.json").write_text(json.dumps({"run": args.run, "set": args.set, "rows": rows}, indent=1))
    text = table(rows)
    (RESULTS / "judge_seeds.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    run()

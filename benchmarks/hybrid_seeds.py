"""Experiment: reward models from human labels, AI labels and hybrid labels on the demo's comparison queue, over seeds
(issue 17 item 6): RM accuracy against gold on held-out pairs, and how many human ratings each used.

    .venv/bin/python benchmarks/hybrid_seeds.py --run runs/demo [--seeds 0,1,2] [--out runs/hybrid_seeds]
                                                [--budgets 0.4,0.3] [--prepare] [--dpo]

--prepare first builds what the experiment reads with the demo's own settings (tether.stages.demo): the world, the
tokenizer, the pretrained base, the SFT policy and the comparison queue (no PPO, DPO or audit). Resumable: every
step skips when its output exists.

Per seed s, on <run>/collect/queue.jsonl split by prompt (held-out fraction --heldout, seed s):
1. `tether label app=false raters.seed=s`: the simulated people (3 ratings per pair) on the whole queue.
2. `tether judge simulated=true sim.seed=s seed=s`: the simulated AI judge on the whole queue, both orders.
3. Training sets (training pairs only): human = every rating; ai = the judge's labels; hybrid@b = `tether hybrid
   budget=b`: the judge's labels where it is sure, the people's ratings of the routed pairs (the same raters'
   decisions as in `human`: a rating is seeded by pair and rater); random@b, the control: as many pairs to people,
   drawn at random (seed s) instead of where the judge is unsure, the judge's labels elsewhere (first budget only).
4. `tether rm` from the demo's SFT policy with the demo's RM settings on each (soft: soft_labels=true, the judge's
   p_a as the target), with epochs scaled so that every set trains for as many comparisons as `human` (one epoch of
   it), so that the sets differ in their labels, not in their compute.
5. Each RM's accuracy against the gold preference on the held-out pairs (gold ties skipped), and the human ratings
   its set used (the share of `human`'s).
6. With --dpo: DPO from the SFT policy on each set but the control (hard labels; the demo's DPO settings, 60
   steps of 32 comparisons for every set) and the policy's mean gold on the world's held-out prompts (temperature 1, 4 samples
   per prompt), beside the SFT policy's.
Writes benchmarks/results/hybrid_seeds.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path

from tether.cli import main
from tether.data.preferences import read_comparisons, split_by_prompt, write_comparisons
from tether.judge.routing import PEOPLE_TARGET, merge

RESULTS = Path(__file__).resolve().parent / "results"


def prepare(run: Path, seed: int = 0) -> None:
    """World, tokenizer, base model, SFT policy and comparison queue as `tether demo name=<run>` makes them."""
    from tether.stages import collect, pretrain, sft
    from tether.stages.demo import DemoConfig, _stage_configs
    from tether.tokenizer import run as train_tokenizer
    from tether.world.build import run as build_world

    stages = _stage_configs(DemoConfig(name=run.name, runs=str(run.parent), seed=seed))
    steps = [("world", build_world, "world/eval.jsonl"), ("tokenizer", train_tokenizer, "tokenizer/tokenizer.json"),
             ("pretrain", pretrain.run, "pretrain/model/model.safetensors"),
             ("sft", sft.run, "sft/model/model.safetensors"), ("collect", collect.run, "collect/queue.jsonl")]
    for name, fn, done in steps:
        if not (run / done).exists():
            fn(stages[name])


def tether(*args: str) -> None:
    if main(list(args)) != 0:
        raise SystemExit(f"tether {' '.join(args)} failed")


def labels(run: Path, out: Path, seed: int) -> tuple[Path, Path]:
    """Steps 1-2: the simulated people's ratings and the simulated judge's labels of the whole queue."""
    queue, world = run / "collect/queue.jsonl", run / "world"
    ratings, judged = out / f"label{seed}/comparisons.jsonl", out / f"judge{seed}/comparisons.jsonl"
    if not ratings.exists():
        tether("label", f"queue={queue}", f"world={world}", f"raters.seed={seed}", "app=false",
               f"out={ratings.parent}")
    if not judged.exists():
        tether("judge", "simulated=true", f"world={world}", f"queue={queue}", f"reference={ratings}",
               f"sim.seed={seed}", f"seed={seed}", f"out={judged.parent}")
    return ratings, judged


def training_sets(run: Path, out: Path, seed: int, budgets: list[float], heldout: float) -> dict[str, Path]:
    """Step 3: the held-out pairs (people's ratings, for `tether rm`'s eval) and every training set."""
    ratings_file, judged_file = labels(run, out, seed)
    folder = out / f"s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    queue = read_comparisons(run / "collect/queue.jsonl")
    train, test = split_by_prompt(queue, heldout, seed)
    train_ids, test_ids = {c.id for c in train}, {c.id for c in test}
    # one rating per (pair, rater), as the rater app collects them: the queue lists a few pairs twice (the same two
    # responses sampled again), and `tether label` rates each listing
    ratings = list({(c.id, c.rater): c for c in read_comparisons(ratings_file)}.values())
    sets = {"heldout": folder / "heldout.jsonl", "human": folder / "human.jsonl", "ai": folder / "ai.jsonl"}
    # people's ratings of the held-out pairs, with meta.p_a from the choice so that a soft-label run reads them too
    write_comparisons(sets["heldout"], [replace(c, meta={**c.meta, "p_a": PEOPLE_TARGET[c.choice]})
                                        for c in ratings if c.id in test_ids])
    write_comparisons(sets["human"], [c for c in ratings if c.id in train_ids])
    write_comparisons(sets["ai"], [c for c in read_comparisons(judged_file) if c.id in train_ids])
    for budget in budgets:
        hybrid = folder / f"hybrid{budget:g}"
        settings = [f"judged={sets['ai']}", f"budget={budget}", f"world={run / 'world'}", f"out={hybrid}"]
        tether("hybrid", *settings)  # 1. route
        routed = {c.id for c in read_comparisons(hybrid / "people_queue.jsonl")}
        write_comparisons(hybrid / "people.jsonl", [c for c in ratings if c.id in routed])  # people rate those
        tether("hybrid", *settings, f"people={hybrid / 'people.jsonl'}")  # 2. merge
        sets[f"hybrid{budget:g}"] = hybrid / "comparisons.jsonl"
        # the control: as many pairs to people, drawn at random instead of where the judge is unsure
        judged = read_comparisons(sets["ai"])
        chosen = {c.id for c in random.Random(seed).sample(judged, len(routed))}
        sets[f"random{budget:g}"] = folder / f"random{budget:g}.jsonl"
        write_comparisons(sets[f"random{budget:g}"], merge([c for c in judged if c.id not in chosen],
                                                           [c for c in ratings if c.id in chosen]))
    return sets


def train_rm(run: Path, data: Path, heldout: Path, folder: Path, seed: int, epochs: float, soft: bool) -> dict:
    """Step 4-5: one reward model with the demo's RM settings; its accuracy against gold on the held-out pairs."""
    from tether.reward import RewardModel
    from tether.stages.demo import _rm_defaults
    from tether.stages.evaluate import reward_model_gold_accuracy
    from tether.world.build import load_world

    result = folder / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    rm = _rm_defaults()
    tether("rm", f"data={data}", f"eval_data={heldout}", f"model={run / 'sft/model'}", f"epochs={epochs:.6f}",
           f"lr={rm.lr}", "eval_every=0", "save_every=0", f"seed={seed}", f"soft_labels={str(soft).lower()}",
           f"out={folder}")
    model = RewardModel.from_pretrained(str(folder / "model"))
    held_out = read_comparisons(heldout)
    row = {**reward_model_gold_accuracy(model.score, load_world(run / "world"), held_out),
           "vs_raters": json.loads((folder / "eval.json").read_text())["eval"]["accuracy"], "epochs": epochs}
    result.write_text(json.dumps(row, indent=1))
    return row


def policy_gold(run: Path, model: Path, folder: Path, seed: int) -> float:
    """Mean gold of a policy on the world's held-out prompts as the demo's footing samples it (temperature 1,
    4 responses per prompt, one seed for every policy of a seed)."""
    summary = folder / "eval_summary.json"
    if not summary.exists():
        tether("evaluate", f"model={model}", f"world={run / 'world'}", "temperature=1.0", "samples_per_prompt=4",
               f"seed={seed}", f"out={folder}")
    return json.loads(summary.read_text())["all"]["gold"]


def train_dpo(run: Path, data: Path, folder: Path, seed: int) -> float:
    """DPO from the demo's SFT policy with the demo's DPO settings (60 steps of 32 comparisons: the same compute
    for every set); the policy's gold."""
    from tether.stages.demo import _dpo_defaults

    if not (folder / "model/model.safetensors").exists():
        d = _dpo_defaults()
        tether("dpo", f"data={data}", f"model={run / 'sft/model'}", f"max_steps={d.max_steps}", f"lr={d.lr}",
               f"beta={d.beta}", "eval_every=0", "save_every=0", "kl_eval_prompts=0", f"seed={seed}", f"out={folder}")
    return policy_gold(run, folder / "model", folder / "eval", seed)


def one_seed(run: Path, out: Path, seed: int, budgets: list[float], heldout: float, dpo: bool) -> dict:
    sets = training_sets(run, out, seed, budgets, heldout)
    rows = {name: read_comparisons(path) for name, path in sets.items() if name != "heldout"}
    human_ratings = len(rows["human"])
    conditions = [("human", False), ("ai", False), ("ai", True)]
    conditions += [(name, soft) for name in rows if name.startswith("hybrid") for soft in (False, True)]
    conditions += [(f"random{budgets[0]:g}", False)]  # the control, at the first budget
    out_row = {"seed": seed, "train_pairs": len({c.id for c in rows["ai"]}), "human_ratings_all": human_ratings,
               "conditions": {}}
    for name, soft in conditions:
        used = sum(not (c.rater or "").startswith("judge:") for c in rows[name])
        key = f"{name}{'-soft' if soft else ''}"
        result = train_rm(run, sets[name], sets["heldout"], out / f"s{seed}/rm-{key}", seed,
                          human_ratings / len(rows[name]), soft)
        entry = {**result, "human_ratings": used, "human_share": used / human_ratings, "rows": len(rows[name])}
        if name.startswith("hybrid"):
            report = json.loads((sets[name].parent / "hybrid_report.json").read_text())
            entry.update(threshold=report["routing"]["threshold"], routed_share=report["routing"]["routed_share"],
                         labels_vs_gold=report["gold"])
        if dpo and not soft and not name.startswith("random"):
            entry["dpo_gold"] = train_dpo(run, sets[name], out / f"s{seed}/dpo-{name}", seed)
        out_row["conditions"][key] = entry
    if dpo:
        out_row["sft_gold"] = policy_gold(run, run / "sft/model", out / f"s{seed}/eval-sft", seed)
    return out_row


def _dpo(row: dict, c: dict) -> str:
    return f"{c['dpo_gold']:+.3f} ({row['sft_gold']:+.3f})" if "dpo_gold" in c and "sft_gold" in row else ""


def table(rows: list[dict]) -> str:
    lines = ["| seed | training labels | human ratings (share) | RM vs gold | vs human-only | RM vs raters | threshold "
             "| DPO policy gold (SFT) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = row["conditions"]["human"]["accuracy_vs_gold"]
        for key, c in row["conditions"].items():
            threshold = f"{c['threshold']:.3f}" if "threshold" in c else ""
            lines.append(f"| {row['seed']} | {key} | {c['human_ratings']} ({c['human_share']:.1%}) "
                         f"| {c['accuracy_vs_gold']:.1%} | {100 * (c['accuracy_vs_gold'] - base):+.1f} "
                         f"| {c['vs_raters']:.1%} | {threshold} | {_dpo(row, c)} |")
    lines.append("")
    for key in rows[0]["conditions"]:
        acc = [r["conditions"][key]["accuracy_vs_gold"] for r in rows]
        gap = [100 * (r["conditions"][key]["accuracy_vs_gold"] - r["conditions"]["human"]["accuracy_vs_gold"])
               for r in rows]
        share = [r["conditions"][key]["human_share"] for r in rows]
        lines.append(f"{key}: RM vs gold mean {statistics.mean(acc):.1%} (sd "
                     f"{statistics.stdev(acc) if len(acc) > 1 else 0:.1%}), vs human-only "
                     f"{statistics.mean(gap):+.1f} points (worst seed {min(gap):+.1f}), human ratings "
                     f"{statistics.mean(share):.1%} (most {max(share):.1%})")
    lines += ["", "| seed | set | routed pairs | judge's kept labels vs gold | people's majority on the routed pairs "
              "| the judge's labels of those |", "|---|---|---|---|---|---|"]
    for row in rows:
        for key, c in row["conditions"].items():
            if "labels_vs_gold" in c and not key.endswith("soft"):
                g = c["labels_vs_gold"]
                lines.append(f"| {row['seed']} | {key} | {c['routed_share']:.1%} | {g['judge']['agreement']:.1%} "
                             f"| {g['people']['agreement']:.1%} ({g['people']['pairs']} not gold ties) "
                             f"| {g['judge_on_people_pairs']['agreement']:.1%} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a `tether demo` run folder (or one --prepare makes)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/hybrid_seeds")
    parser.add_argument("--budgets", default="0.4", help="shares of the pairs routed to people, comma-separated")
    parser.add_argument("--heldout", type=float, default=0.25, help="share of the queue's prompts held out")
    parser.add_argument("--prepare", action="store_true", help="first build the demo's world, SFT and queue")
    parser.add_argument("--dpo", action="store_true", help="also DPO from the SFT policy on each set (hard labels)")
    return parser.parse_args()


def run() -> None:
    args = parse_args()
    run_dir, out = Path(args.run), Path(args.out)
    if args.prepare:
        prepare(run_dir)
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = []
    for s in args.seeds.split(","):
        rows.append(one_seed(run_dir, out, int(s), budgets, args.heldout, args.dpo))
        RESULTS.mkdir(exist_ok=True)  # written after every seed, so a long run shows its progress
        (RESULTS / "hybrid_seeds.json").write_text(json.dumps({"run": args.run, "budgets": budgets,
                                                               "heldout": args.heldout, "rows": rows}, indent=1))
        (RESULTS / "hybrid_seeds.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    run()

"""Experiment: does the monitor catch the demo's reward hacking in time, over seeds, and does its early stop keep a
good policy? (The acceptance of the audit issue.)

    .venv/bin/python benchmarks/monitor_seeds.py --runs runs/demo,runs/seed1,runs/seed2 [--out runs/monitor_seeds]
                                                 [--set key=value ...]

1. Per finished `tether demo` run (one per seed): its PPO run as the demo ran it (ppo/metrics.jsonl and
   alerts.jsonl; `--set` reruns PPO from the run's ppo/config.yaml with those overrides instead): the held-out
   gold curve of its evaluations, the gold peak, the first evaluation where half of the gain is gone, whether the
   gain is larger than the evaluations' noise (2 standard errors of a difference, from eval/gold_se), the first
   alert and the first alert that does not read gold (`HELDOUT_ALERTS` left out).
2. The same PPO with the monitor's early stop (stop_on_alert, stop_on=[heldout_drop]): where it stopped and the
   checkpoint it kept (out/best, the best evaluation up to the stop).
3. A fresh evaluation (all held-out prompts, `--samples` each at temperature 1, a seed no run used) of the kept
   checkpoint and of the full run's best checkpoint (its out/best): the kept one's gold as a share of the best.
4. benchmarks/results/<tag>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from online_curves import RESULTS, summarise

from tether.config import load_config
from tether.models import load_policy, load_tokenizer
from tether.stages import ppo
from tether.stages.evaluate import EvalConfig, evaluate_policy
from tether.world.build import load_world

FRESH_SEED = 424242  # never a training or evaluation seed of the runs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def full_run(run: Path, out: Path, overrides: list[str]) -> Path:
    """The demo's own PPO run, or with `overrides` a rerun of its config (resumable)."""
    if not overrides:
        return run / "ppo"
    folder = out / f"{run.name}-full"
    if not (folder / "model/model.safetensors").exists():
        cfg = load_config(ppo.PPOConfig, run / "ppo/config.yaml", overrides)
        ppo.run(replace(cfg, out=str(folder), resume=True))
    return folder


def stopped_run(run: Path, out: Path, overrides: list[str]) -> Path:
    """The same PPO with the early stop on held-out drops (the other detectors still warn)."""
    folder = out / f"{run.name}-stop"
    if not (folder / "model/model.safetensors").exists():
        cfg = load_config(ppo.PPOConfig, run / "ppo/config.yaml", overrides)
        cfg = replace(cfg, out=str(folder), resume=True,
                      monitor=replace(cfg.monitor, stop_on_alert=True, stop_on=["heldout_drop"], keep_best=True))
        ppo.run(cfg)
    return folder


def noise_floor(folder: Path, peak_step: int) -> float:
    """2 standard errors of the difference between the first evaluation and the peak's."""
    rows = {r["step"]: r for r in read_jsonl(folder / "metrics.jsonl") if r.get("eval/gold") is not None}
    se0, se1 = rows[0].get("eval/gold_se"), rows[peak_step].get("eval/gold_se")
    return float("nan") if se0 is None or se1 is None else 2 * (se0 ** 2 + se1 ** 2) ** 0.5


def fresh_gold(model_dir: Path, world, samples: int, max_new_tokens: int) -> float:
    cfg = EvalConfig(temperature=1.0, samples_per_prompt=samples, max_new_tokens=max_new_tokens, seed=FRESH_SEED)
    _, summary = evaluate_policy(load_policy(str(model_dir)), load_tokenizer(str(model_dir)), world, cfg,
                                 label=f"fresh {model_dir.parent.name}")
    return summary["all"]["gold"]


def seed_result(run: Path, args) -> dict:
    full, stop = full_run(run, Path(args.out), args.set), stopped_run(run, Path(args.out), args.set)
    r = summarise(full)
    rows = read_jsonl(stop / "metrics.jsonl")
    kept = json.loads((stop / "best/best.json").read_text())
    best = json.loads((full / "best/best.json").read_text())
    world, tokens = load_world(run / "world"), load_config(ppo.PPOConfig, run / "ppo/config.yaml").max_new_tokens
    fresh_kept = fresh_gold(stop / "best", world, args.samples, tokens)
    fresh_best = fresh_gold(full / "best", world, args.samples, tokens)
    return {"run": str(run), "start_gold": r["start_gold"], "peak": r["peak"], "gain": r["gain"],
            "gain_noise_floor": noise_floor(full, r["peak"]["step"]), "half_gain_lost_step": r["half_gain_lost_step"],
            "end": r["end"], "first_alert": r["first_alert"], "first_gold_free_alert": r["first_gold_free_alert"],
            "stopped_at": rows[-1]["step"] if rows else None, "kept": kept, "full_best": best,
            "fresh_gold_kept": fresh_kept, "fresh_gold_full_best": fresh_best,
            "kept_share_of_best": fresh_kept / fresh_best if fresh_best else None, "curve": r["curve"]}


def _alert(a: dict | None) -> str:
    return f"{a['name']} @ {a['step']}" if a else "none"


def markdown(results: list[dict]) -> str:
    lines = ["| run | gold start | gold peak (step) | gain / 2 SE | half gain lost at | first alert | first gold-free "
             "alert | stopped at | kept (step, eval gold) | fresh gold kept / full run's best |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['start_gold']:+.3f} | {r['peak']['gold']:+.3f} ({r['peak']['step']}) | "
                     f"{r['gain']:+.3f} / {r['gain_noise_floor']:.3f} | {r['half_gain_lost_step']} | "
                     f"{_alert(r['first_alert'])} | {_alert(r['first_gold_free_alert'])} | {r['stopped_at']} | "
                     f"{r['kept']['step']}, {r['kept']['value']:+.3f} | {r['fresh_gold_kept']:+.3f} / "
                     f"{r['fresh_gold_full_best']:+.3f} = {r['kept_share_of_best']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/demo", help="comma-separated finished `tether demo` folders (one per seed)")
    ap.add_argument("--out", default="runs/monitor_seeds", help="folder of the reruns")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PPO overrides (then PPO is rerun)")
    ap.add_argument("--samples", type=int, default=4, help="responses per held-out prompt in the fresh evaluation")
    ap.add_argument("--tag", default="monitor_seeds", help="results file name: benchmarks/results/<tag>.{json,md}")
    args = ap.parse_args()
    runs = [Path(x) for x in args.runs.split(",")]
    missing = [str(r) for r in runs if not (r / "ppo/config.yaml").exists()]
    if missing:
        sys.exit(f"not finished demo runs (no ppo/config.yaml): {', '.join(missing)}")
    started, results = time.time(), []
    for run in runs:
        results.append(seed_result(run, args))
        print(markdown(results[-1:]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"args": vars(args), "seeds": results,
                                                            "seconds": time.time() - started}, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()

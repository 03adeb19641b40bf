"""Experiment: does a reward-model ensemble's disagreement warn before held-out gold falls, on rater biases other than
the demo's, and does a conservative ensemble reward (Coste et al. 2023) keep more of gold's peak? (Issue 20, item 5.)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ensemble_seeds.py [--seeds 0,1,2,3,4] [--biases length,agreement]
                                                                    [--members 4] [--conservative min] [--out runs/ens]
                                                                    [--ensemble-unit prompt|rater] [--base-seed b]
                                                                    [--ppo-set KEY=VALUE ...]

1. Per seed, the demo's stages up to the comparison queue (world, tokenizer, pretraining, SFT, collect: demo settings,
   `tether demo`'s building blocks), shared by the bias settings; with `--base-seed b`, world, pretraining and SFT are
   seed b's for every seed (pretraining is the costliest stage), and the queue, labels, reward models and PPO each
   seed's own.
2. Per rater-bias setting (`BIASES`: the demo's rater pool with one bias much stronger): the raters label the queue,
   `tether rm ensemble=<members>` (member 0 the plain reward model, the others bootstrap resamples of the prompts, or
   with `--ensemble-unit rater` of the raters, `RMConfig.ensemble_unit`), then the demo's
   PPO twice: against the plain reward model (reward_ensemble=single; the others only measure their disagreement),
   and against the conservative reward (`--conservative`: min, the worst case, or uwo).
3. Per PPO run: the held-out gold curve (start, peak, end), the first evaluation after the peak where gold is below
   its start, the first after the peak where it is below in two evaluations in a row (one evaluation's noise is
   ~0.055 gold), the first where it is below by 2 standard errors paired by prompt (eval_gold.jsonl), the first
   gold-free alert with and without the ensemble detector, the first ensemble_disagreement alert, the first alert
   of the rate detectors on the evaluations' samples (eval_<rate>) and the first without them; per pair of runs
   the drop from gold's peak to its end, plain against conservative.
4. benchmarks/results/<tag>.{json,md}, rewritten after every finished run (resumable: finished stages are skipped);
   `--report-only` rewrites them from the finished runs under --out, training nothing.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from online_curves import RESULTS, summarise

from tether.config import load_config, save_config
from tether.ensemble import member_dirs
from tether.monitor.stats import paired_difference
from tether.report.data import per_prompt_gold
from tether.stages import collect, ppo, pretrain, rm, sft
from tether.stages import label as label_stage
from tether.stages.demo import DemoConfig, _stage_configs
from tether.stages.failures import HELDOUT_ALERTS
from tether.tokenizer import run as train_tokenizer_stage
from tether.world.build import run as build_world
from tether.world.raters import RaterPoolConfig

BIASES = {"length": {"length_bias": 1.2}, "agreement": {"agreement_bias": 2.4}, "flattery": {"flattery_bias": 2.4}}
"""Rater-bias settings other than the demo's (length_bias 0.4, agreement_bias 0.8, flattery_bias 0.8): three times
the demo's mean bias."""


def shared_stages(seed: int, out: Path, base: int | None) -> dict:
    """World, tokenizer, pretraining, SFT and the comparison queue of one seed (skipped when on disk). With `base`,
    world, tokenizer, pretraining and SFT are seed `base`'s (trained once), the queue and later stages seed `seed`'s."""
    base = seed if base is None else base
    stages = _stage_configs(DemoConfig(name=f"seed{base}", runs=str(out), seed=base, resume=True))
    root = out / f"seed{base}"
    for name, fn, done in (("world", build_world, "world/eval.jsonl"),
                           ("tokenizer", train_tokenizer_stage, "tokenizer/tokenizer.json"),
                           ("pretrain", pretrain.run, "pretrain/model/model.safetensors"),
                           ("sft", sft.run, "sft/model/model.safetensors")):
        if not (root / done).exists():
            print(f"== seed {base}: {name}", flush=True)
            fn(stages[name])
    stages = _stage_configs(DemoConfig(name=f"seed{base}", runs=str(out), seed=seed, resume=True))
    queue = root / "collect" if seed == base else out / f"seed{seed}-collect"
    stages["collect"] = replace(stages["collect"], out=str(queue))
    stages["label"] = replace(stages["label"], queue=str(queue / "queue.jsonl"))
    if not (queue / "queue.jsonl").exists():
        print(f"== seed {seed}: collect", flush=True)
        collect.run(stages["collect"])
    return stages


def bias_stages(stages: dict, seed: int, bias: str, members: int, root: Path, unit: str = "prompt") -> Path:
    """Labels by the biased rater pool and the reward-model ensemble (members after the first on bootstrap resamples
    of `unit`: prompt or rater, RMConfig.ensemble_unit); returns the ensemble's folder."""
    label_dir, rm_dir = root / "label", root / "rm"
    if not (label_dir / "comparisons.jsonl").exists():
        print(f"== seed {seed} {bias}: label", flush=True)
        raters = replace(RaterPoolConfig(), seed=seed, **BIASES[bias])
        label_stage.run(replace(stages["label"], raters=raters, out=str(label_dir), app=False))
    model = rm_dir / "model"
    if not ((model / "reward_config.json").exists() and len(member_dirs(model)) == members):
        print(f"== seed {seed} {bias}: rm ensemble={members} ensemble_unit={unit}", flush=True)
        rm.run(replace(stages["rm"], data=str(label_dir / "comparisons.jsonl"), out=str(rm_dir), ensemble=members,
                       ensemble_unit=unit, resume=True))
    return model


def with_settings(cfg, settings: list[str], folder: Path):
    """`cfg` with `key=value` settings over it, as on the command line (saved to folder/base.yaml, then loaded with
    them: the same checks and conversions); `cfg` itself without any."""
    if not settings:
        return cfg
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "base.yaml")
    return load_config(type(cfg), folder / "base.yaml", settings)


def ppo_run(stages: dict, reward_model: Path, reward_ensemble: str, folder: Path, settings: list[str] = ()) -> Path:
    if not (folder / "model/model.safetensors").exists():
        print(f"== {folder}", flush=True)
        ppo.run(with_settings(replace(stages["ppo"], reward_model=str(reward_model), reward_ensemble=reward_ensemble,
                                      out=str(folder), resume=True), list(settings), folder))
    return folder


def alerts(folder: Path) -> list[dict]:
    path = folder / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def first(rows: list[dict]) -> dict | None:
    return min(rows, key=lambda r: r["step"]) if rows else None


def run_result(folder: Path) -> dict:
    """The gold curve's landmarks and the first alerts of one PPO run."""
    r = summarise(folder)
    start, peak = r["start_gold"], r["peak"]
    after_peak = [p for p in r["curve"] if p["step"] > peak["step"]]
    rows = [a for a in alerts(folder) if a["name"] not in HELDOUT_ALERTS]
    ens = [p for p in (json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x)
           if p.get("ensemble/std") is not None]
    return {"start_gold": start, "peak": peak, "end": r["end"], "peak_to_end_drop": peak["gold"] - r["end"]["gold"],
            "gold_below_start_step": next((p["step"] for p in after_peak if p["gold"] < start), None),
            "gold_first_below_start_step": next((p["step"] for p in r["curve"][1:] if p["gold"] < start), None),
            "gold_below_start_twice_step": below_twice(after_peak, start),
            "gold_below_start_2se_step": below_start_paired(folder),
            "first_gold_free_alert": first(rows),
            "first_gold_free_alert_without_ensemble": first([a for a in rows if a["name"] != "ensemble_disagreement"]),
            "first_ensemble_alert": first([a for a in rows if a["name"] == "ensemble_disagreement"]),
            "first_eval_alert": first([a for a in rows if a["name"].startswith("eval_")]),
            "first_gold_free_alert_without_eval": first([a for a in rows if not a["name"].startswith("eval_")]),
            "ensemble_std": [[p["step"], p["ensemble/std"]] for p in ens], "curve": r["curve"]}


def below_twice(evals: list[dict], start: float) -> int | None:
    """The first of `evals` (those after gold's peak) where gold is below its start in it and the next one: one
    evaluation's gold has a standard error near 0.055 (240 samples), so a single one below the start may be noise."""
    return next((a["step"] for a, b in zip(evals, evals[1:]) if a["gold"] < start and b["gold"] < start), None)


def below_start_paired(folder: Path, z: float = 2.0) -> int | None:
    """The first evaluation where gold is below its start by more than z standard errors of the difference paired
    by prompt (eval_gold.jsonl: the same prompts and row noise at every evaluation), a fall beyond the noise."""
    gold = per_prompt_gold(folder / "eval_gold.jsonl")
    for step in sorted(gold)[1:]:
        d = paired_difference(gold[step], gold[0])
        if d is not None and d[0] < -z * d[1]:
            return step
    return None


def _alert(a: dict | None) -> str:
    return f"{a['name']} @ {a['step']}" if a else "none"


def _first(alert: dict | None, fall: int | None) -> str:
    if alert is None:
        return "no alert"
    if fall is None:
        return "alert, no fall"
    return "yes" if alert["step"] < fall else "no"


def markdown(results: list[dict], conservative: str) -> str:
    lines = ["| seed | raters | gold start -> peak (step) -> end | gold below start after peak | ... in 2 evaluations "
             "in a row | below start by 2 paired se | first gold-free alert | eval-sample alert | without eval-sample "
             "detectors | ensemble alert | alert first? (after peak / 2 in a row / 2 se) | ensemble std step 1 "
             "-> end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in results:
        p = x["plain"]
        std = f"{p['ensemble_std'][0][1]:.3f} -> {p['ensemble_std'][-1][1]:.3f}" if p["ensemble_std"] else "-"
        falls = [p.get(f"gold_below_start{k}_step") for k in ("", "_twice", "_2se")]
        lines.append(f"| {x['seed']} | {x['bias']} | {p['start_gold']:+.3f} -> {p['peak']['gold']:+.3f} "
                     f"({p['peak']['step']}) -> {p['end']['gold']:+.3f} | {' | '.join(map(str, falls))} | "
                     f"{_alert(p['first_gold_free_alert'])} | {_alert(p.get('first_eval_alert'))} | "
                     f"{_alert(p.get('first_gold_free_alert_without_eval'))} | {_alert(p['first_ensemble_alert'])} | "
                     f"{' / '.join(_first(p['first_gold_free_alert'], f) for f in falls)} | {std} |")
    lines += ["", f"| seed | raters | plain: peak (step) -> end, drop | {conservative}: peak (step) -> end, drop |",
              "|---|---|---|---|"]
    for x in results:
        if "conservative" not in x:
            continue
        cells = [f"{r['peak']['gold']:+.3f} ({r['peak']['step']}) -> {r['end']['gold']:+.3f}, "
                 f"{r['peak_to_end_drop']:.3f}" for r in (x["plain"], x["conservative"])]
        lines.append(f"| {x['seed']} | {x['bias']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def write(results: list[dict], args, started: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"args": vars(args), "runs": results,
                                                            "seconds": time.time() - started}, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(markdown(results, args.conservative))


def report_only(args, out: Path, started: float) -> None:
    """The results of the finished PPO runs of --seeds x --biases under --out; trains nothing."""
    results = []
    for seed in map(int, args.seeds.split(",")):
        for bias in args.biases.split(","):
            root = out / f"seed{seed}-{bias}"
            done = {name: (root / name / "model/model.safetensors").exists()
                    for name in ("ppo-single", f"ppo-{args.conservative}")}
            if done["ppo-single"]:
                result = {"seed": seed, "bias": bias, "raters": BIASES[bias],
                          "plain": run_result(root / "ppo-single")}
                if done[f"ppo-{args.conservative}"]:
                    result["conservative"] = run_result(root / f"ppo-{args.conservative}")
                results.append(result)
    write(results, args, started)
    print(markdown(results, args.conservative))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--biases", default="length,agreement", help=f"comma-separated, from {', '.join(BIASES)}")
    ap.add_argument("--members", type=int, default=4, help="reward models in the ensemble")
    ap.add_argument("--ensemble-unit", default="prompt", choices=("prompt", "rater"),
                    help="what the members' bootstrap resamples (RMConfig.ensemble_unit); use its own --out")
    ap.add_argument("--conservative", default="min", choices=("min", "uwo", "mean"))
    ap.add_argument("--out", default="runs/ensemble_seeds")
    ap.add_argument("--tag", default="ensemble_seeds", help="results: benchmarks/results/<tag>.{json,md}")
    ap.add_argument("--base-seed", type=int, default=None,
                    help="world, pretraining and SFT of this seed for every seed (the rest: each seed's own)")
    ap.add_argument("--plain-only", action="store_true", help="skip the conservative PPO runs")
    ap.add_argument("--report-only", action="store_true", help="rewrite the results from the finished runs on disk")
    ap.add_argument("--ppo-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="settings over the demo's PPO (e.g. value_model=separate lr=1e-4); use its own --out")
    args = ap.parse_args()
    out, started, results = Path(args.out), time.time(), []
    if args.report_only:
        return report_only(args, out, started)
    for seed in map(int, args.seeds.split(",")):
        stages = shared_stages(seed, out, args.base_seed)
        for bias in args.biases.split(","):
            root = out / f"seed{seed}-{bias}"
            model = bias_stages(stages, seed, bias, args.members, root, args.ensemble_unit)
            result = {"seed": seed, "bias": bias, "raters": BIASES[bias],
                      "plain": run_result(ppo_run(stages, model, "single", root / "ppo-single", args.ppo_set))}
            results.append(result)
            write(results, args, started)
            if not args.plain_only:
                folder = ppo_run(stages, model, args.conservative, root / f"ppo-{args.conservative}", args.ppo_set)
                result["conservative"] = run_result(folder)
                write(results, args, started)
            print(markdown([result], args.conservative), flush=True)
    print(markdown(results, args.conservative))


if __name__ == "__main__":
    main()

"""Experiment: PPO, GRPO and RLOO from the demo's SFT policy, each against the learned reward model (proxy) and
against the world's gold reward, with gold and proxy evaluated on held-out prompts along the way.

    .venv/bin/python benchmarks/online_curves.py --run runs/demo [--algorithms ppo,grpo,rloo] [--rewards rm,gold]
                                                 [--steps 60] [--kl-coef 0.02] [--eval-every 5] [--eval-samples 4]

1. For each algorithm and reward source: the algorithm's own defaults (tether's PPOConfig, GRPOConfig,
   RLOOConfig: rollout layout, epochs, whitening), with the demo PPO's policy, prompts, learning rate, response
   length and reward model, and one small KL coefficient for all (`--kl-coef`): 32 responses per step
   (PPO 32 prompts x 1, GRPO and RLOO 8 prompts x 4). Held-out evaluations every `--eval-every` steps at
   temperature 1, `--eval-samples` responses per prompt, the same draw each time (common random numbers).
   The monitor runs on the reward-model runs (its alerts are recorded); gold is only evaluated there.
2. Per run: the curve (step, sqrt of the rollouts' KL, held-out proxy score and gold), the gold peak (step,
   value), the gold at the end, the first monitor alert, the behaviour rates at the end (padding, flattery,
   sycophancy, harmful compliance) against the start, and the Gao et al. RL-form fit of gold against sqrt(KL);
   with eval_gold.jsonl (each held-out prompt's gold per evaluation), the rise to the peak and the fall from it with
   2 standard errors paired by prompt (`tether.report.findings.paired_shape`).
3. Written to benchmarks/results/online_curves.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tether.config import load_config
from tether.monitor.gao import fit_gao
from tether.report.data import per_prompt_gold
from tether.report.findings import paired_shape
from tether.stages import ppo
from tether.stages.demo import proxy_gold_curve
from tether.stages.failures import HELDOUT_ALERTS

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {"ppo": ppo.PPOConfig, "grpo": ppo.GRPOConfig, "rloo": ppo.RLOOConfig}
SHARED = ("model", "prompts", "reward_model", "world", "lr", "max_new_tokens", "temperature", "eval_prompts", "seed")


def config(run: Path, out: Path, algorithm: str, reward: str, args) -> ppo.OnlineConfig:
    demo = load_config(ppo.PPOConfig, run / "ppo/config.yaml")
    cfg = CONFIGS[algorithm]()
    cfg = replace(cfg, **{k: getattr(demo, k) for k in SHARED})
    return replace(cfg, reward=reward, kl_coef=args.kl_coef, max_steps=args.steps, eval_every=args.eval_every,
                   eval_temperature=1.0, eval_samples=args.eval_samples, save_every=10, sample_every=args.eval_every,
                   out=str(out), resume=True, monitor=replace(demo.monitor, enabled=reward == "rm"))


def first_alert(folder: Path, gold_free: bool = False) -> dict | None:
    """The monitor's first alert; gold_free: leaving out the detectors that read the held-out signal, which is
    gold on the world (`HELDOUT_ALERTS`), so what a run without a gold reward would have seen."""
    path = folder / "alerts.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []
    rows = [r for r in rows if not (gold_free and r["name"] in HELDOUT_ALERTS)]
    return min(rows, key=lambda r: r["step"]) if rows else None


def summarise(folder: Path) -> dict:
    curve = proxy_gold_curve(folder / "metrics.jsonl")
    peak = max(curve, key=lambda p: p["gold"])
    start, end = curve[0], curve[-1]
    gain = peak["gold"] - start["gold"]
    half = next((p["step"] for p in curve if p["step"] > peak["step"] and p["gold"] < start["gold"] + gain / 2),
                None) if gain > 0 else None
    try:
        fit = asdict(fit_gao([p["sqrt_kl"] for p in curve], [p["gold"] - start["gold"] for p in curve]))
    except ValueError as e:
        fit = {"error": str(e)}
    return {"curve": curve, "start_gold": start["gold"], "peak": {"step": peak["step"], "gold": peak["gold"],
            "sqrt_kl": peak["sqrt_kl"]}, "end": {"step": end["step"], "gold": end["gold"], "proxy": end["proxy"],
            "sqrt_kl": end["sqrt_kl"]}, "gain": gain, "half_gain_lost_step": half, "first_alert": first_alert(folder),
            "first_gold_free_alert": first_alert(folder, gold_free=True),
            "gao_fit_gold": fit, "paired": paired_shape(per_prompt_gold(folder / "eval_gold.jsonl"))}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=False)
    for ax, reward in zip(axes, ("rm", "gold")):
        for name, r in results.items():
            if not name.endswith(reward):
                continue
            xs = [p["sqrt_kl"] for p in r["curve"]]
            line, = ax.plot(xs, [p["gold"] for p in r["curve"]], marker="o", ms=3, label=f"{name}: gold")
            if reward == "rm":
                ax.plot(xs, [p["proxy"] for p in r["curve"]], ls="--", color=line.get_color(), label=f"{name}: proxy")
        ax.set_xlabel("sqrt(KL to SFT), rollouts")
        ax.set_ylabel("held-out reward, temperature 1")
        ax.set_title(f"trained on {'the reward model' if reward == 'rm' else 'gold'}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _alert(a: dict | None) -> str:
    return f"{a['name']} @ {a['step']}" if a else "-"


def _paired(p: dict | None) -> str:
    """Rise and fall with 2 paired standard errors; "-" for runs without eval_gold.jsonl."""
    if p is None:
        return "-"
    return f"{p['rise']:+.3f} ± {2 * p['rise_se']:.3f} / {p['drop']:+.3f} ± {2 * p['drop_se']:.3f}"


def markdown(results: dict) -> str:
    lines = ["| run | gold start | gold peak (step) | half gain lost at | gold end | rise / fall ± 2 paired se | "
             "proxy end | sqrt KL end | first alert | first gold-free alert |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        alert, free = r["first_alert"], r["first_gold_free_alert"]
        lines.append(f"| {name} | {r['start_gold']:+.3f} | {r['peak']['gold']:+.3f} ({r['peak']['step']}) | "
                     f"{r['half_gain_lost_step']} | {r['end']['gold']:+.3f} | {_paired(r.get('paired'))} | "
                     f"{r['end']['proxy']:+.3f} | "
                     f"{r['end']['sqrt_kl']:.2f} | {_alert(alert)} | {_alert(free)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/demo", help="a finished `tether demo` run folder")
    ap.add_argument("--out", default="runs/online_curves")
    ap.add_argument("--algorithms", default="ppo,grpo,rloo")
    ap.add_argument("--rewards", default="rm,gold")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--kl-coef", type=float, default=0.02)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--tag", default="online_curves", help="results file name: benchmarks/results/<tag>.{json,md,png}")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    if not (run / "ppo/config.yaml").exists():
        sys.exit(f"{run}: not a demo run (no ppo/config.yaml); run `tether demo` first")
    started, results = time.time(), {}
    for reward in args.rewards.split(","):
        for algorithm in args.algorithms.split(","):
            folder = out / f"{algorithm}-{reward}"
            if not (folder / "model/model.safetensors").exists():
                ppo.run(config(run, folder, algorithm, reward, args))
            results[f"{algorithm}-{reward}"] = summarise(folder)
            print(markdown({f"{algorithm}-{reward}": results[f"{algorithm}-{reward}"]}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"args": vars(args), "runs": results,
                                                            "seconds": time.time() - started}, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(markdown(results))
    plot(results, RESULTS / f"{args.tag}.png")
    print(markdown(results))


if __name__ == "__main__":
    main()

"""Experiment: the gold-reward-vs-KL frontier of DPO (a sweep of beta) and PPO (a sweep of the KL coefficient),
after Rafailov et al. 2023, Fig. 2 (left), on the tiny assistant world.

    .venv/bin/python benchmarks/frontier.py --run runs/demo [--betas 0.03,0.1,0.3,1] [--kl-coefs 0.02,0.05,0.2,1]
                                            [--steps 60] [--save-every 20] [--samples 2] [--dpo-lr 3e-4]

Both methods start from the demo's SFT policy and learn from the same rater comparisons: DPO directly, PPO
through the reward model the demo trained on them (the demo's own stage configs, read from the run folder).
1. DPO for each beta and PPO for each KL coefficient, `--steps` optimizer steps each, every checkpoint kept
   (`--save-every`), the monitor off (it does not change the updates).
2. Every checkpoint (and the final model, and the SFT policy itself at KL 0) on one footing: responses sampled
   at temperature 1 for every held-out world prompt (`--samples` each, the same seed for every policy: common
   random numbers), their mean gold reward, and the KL to the SFT policy per response, E_y~pi[log pi(y|x) -
   log pi_sft(y|x)] (k1 summed over the response's tokens; the sequence-level KL Rafailov et al. plot).
   Greedy gold is recorded beside it.
3. Each method's frontier: the best gold reached at or below each KL. Printed, plotted and written to
   benchmarks/results/frontier.{json,md,png}: which frontier is higher, by how much, over the KL range both
   methods cover.
The gold reward is used only to evaluate here, never to train.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from tether.chat import chat_format
from tether.checkpoint import complete_checkpoints
from tether.config import load_config
from tether.models import load_policy, load_tokenizer
from tether.stages import dpo, ppo
from tether.stages.evaluate import EvalConfig, evaluate_policy
from tether.world.build import load_world

RESULTS = Path(__file__).resolve().parent / "results"


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


# ---------------------------------------------------------------------------------------------
# 1. The runs


def dpo_run(run: Path, out: Path, beta: float, args) -> Path:
    cfg = load_config(dpo.DPOConfig, run / "dpo/config.yaml")
    cfg = replace(cfg, beta=beta, lr=args.dpo_lr, max_steps=args.steps, save_every=args.save_every,
                  keep_checkpoints=0, out=str(out), resume=True, kl_eval_prompts=0,
                  monitor=replace(cfg.monitor, enabled=False))
    cache = run / "dpo/ref_logps.safetensors"  # same SFT reference, same pairs: its key check proves it
    if cache.exists() and not (out / cache.name).exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache, out / cache.name)
    if not (out / "model/model.safetensors").exists():
        dpo.run(cfg)
    return out


def ppo_run(run: Path, out: Path, kl_coef: float, args) -> Path:
    cfg = load_config(ppo.PPOConfig, run / "ppo/config.yaml")
    cfg = replace(cfg, kl_coef=kl_coef, max_steps=args.steps, save_every=args.save_every, keep_checkpoints=0,
                  out=str(out), resume=True, eval_prompts=0, sample_every=0,
                  monitor=replace(cfg.monitor, enabled=False))
    if not (out / "model/model.safetensors").exists():
        ppo.run(cfg)
    return out


def trajectory(folder: Path, steps: int) -> list[tuple[int, Path]]:
    """(step, model folder) of every kept checkpoint and the final model."""
    return [(int(p.name.split("-")[1]), p) for p in complete_checkpoints(folder)] + [(steps, folder / "model")]


# ---------------------------------------------------------------------------------------------
# 2. One footing


def footing(model_dir: Path, sft_dir: Path, world, prompts: list[str], args) -> dict:
    """Temperature-1 gold and sequence KL to SFT on the same draw; greedy gold beside it."""
    policy, ref, tokenizer = load_policy(str(model_dir)), load_policy(str(sft_dir)), load_tokenizer(str(sft_dir))
    kl_cfg = dpo.DPOConfig(micro_batch_size=64, max_length=256)
    asked = [p for p in prompts for _ in range(args.samples)]
    texts, k1, k3, n = dpo.sample_logratios(policy, ref, chat_format(tokenizer), asked, args.max_new_tokens, kl_cfg, args.seed)
    gold = [world.judge(p, t).reward for p, t in zip(asked, texts)]
    _, greedy = evaluate_policy(policy, tokenizer, world, EvalConfig(max_new_tokens=args.max_new_tokens),
                                label=f"greedy {model_dir.parent.name}")
    return {"gold_t1": sum(gold) / len(gold), "kl": sum(k1) / len(k1), "kl_k3": sum(k3) / len(k3),
            "tokens": sum(n) / len(n), "gold_greedy": greedy["all"]["gold"], "n": len(gold)}


# ---------------------------------------------------------------------------------------------
# 3. Frontiers


def frontier(points: list[dict]) -> list[dict]:
    """The upper-left envelope: points sorted by KL, each kept if its gold beats every point of lower KL."""
    best, kept = float("-inf"), []
    for p in sorted(points, key=lambda p: p["kl"]):
        if p["gold_t1"] > best:
            best = p["gold_t1"]
            kept.append(p)
    return kept


def best_at(front: list[dict], kl: float) -> float:
    """Best gold among a frontier's points with KL <= kl (a step function)."""
    return max(p["gold_t1"] for p in front if p["kl"] <= kl)


def compare(points: list[dict], fronts: dict[str, list[dict]], grid: int = 50) -> dict:
    """The gap between the two step frontiers on a KL grid over the range both methods' checkpoints cover (from
    the larger of their smallest non-zero KLs to the smaller of their largest)."""
    reach = {m: [p["kl"] for p in points if p["method"] == m and p["kl"] > 0] for m in fronts}
    lo, hi = max(min(k) for k in reach.values()), min(max(k) for k in reach.values())
    if hi <= lo:
        return {"overlap": None}
    xs = [lo + (hi - lo) * i / (grid - 1) for i in range(grid)]
    gaps = [best_at(fronts["dpo"], x) - best_at(fronts["ppo"], x) for x in xs]
    return {"overlap": [lo, hi], "mean_gap_dpo_minus_ppo": sum(gaps) / len(gaps), "max_gap": max(gaps),
            "min_gap": min(gaps), "dpo_higher_share": sum(g > 0 for g in gaps) / len(gaps),
            "best_gold": {m: max(p["gold_t1"] for p in f) for m, f in fronts.items()}}


def plot(points: list[dict], fronts: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, colour in (("dpo", "tab:blue"), ("ppo", "tab:orange")):
        mine = [p for p in points if p["method"] == method]
        ax.scatter([p["kl"] for p in mine], [p["gold_t1"] for p in mine], s=18, color=colour, alpha=0.6,
                   label=f"{method.upper()} checkpoints")
        front = fronts[method] + [{"kl": max(p["kl"] for p in mine), "gold_t1": fronts[method][-1]["gold_t1"]}]
        ax.step([p["kl"] for p in front], [p["gold_t1"] for p in front], where="post", color=colour,
                label=f"{method.upper()} frontier")
    sft = next(p for p in points if p["method"] == "sft")
    ax.axhline(sft["gold_t1"], color="grey", ls=":", label="SFT")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("KL(pi || pi_sft) per response (nats)")
    ax.set_ylabel("gold reward, temperature-1 samples")
    ax.set_title("Gold reward vs KL: DPO (beta sweep) and PPO (KL-coefficient sweep)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(points: list[dict], result: dict) -> str:
    lines = ["| method | setting | step | KL (nats) | gold T=1 | gold greedy |", "|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["method"], p.get("setting", 0), p["step"])):
        lines.append(f"| {p['method']} | {p.get('setting', '')} | {p['step']} | {p['kl']:.2f} | "
                     f"{p['gold_t1']:+.3f} | {p['gold_greedy']:+.3f} |")
    lines += ["", "```", json.dumps(result["comparison"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/demo", help="a finished `tether demo` run folder")
    ap.add_argument("--out", default="runs/frontier", help="folder for the sweep's runs")
    ap.add_argument("--betas", type=floats, default=floats("0.03,0.1,0.3,1"))
    ap.add_argument("--kl-coefs", type=floats, default=floats("0.02,0.05,0.2,1"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--dpo-lr", type=float, default=3e-4)
    ap.add_argument("--samples", type=int, default=2, help="temperature-1 responses per held-out prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    if not (run / "summary.json").exists():
        sys.exit(f"{run}: not a finished demo run (no summary.json); run `tether demo` first")
    started = time.time()
    # 1. The sweeps.
    folders = [("dpo", b, dpo_run(run, out / f"dpo-beta{b:g}", b, args)) for b in args.betas]
    folders += [("ppo", c, ppo_run(run, out / f"ppo-kl{c:g}", c, args)) for c in args.kl_coefs]
    # 2. Every checkpoint on one footing.
    world = load_world(run / "world")
    prompts = [q.text for q in world.eval_queries()]
    sft_dir = run / "sft/model"
    torch.manual_seed(args.seed)
    done = out / "points.jsonl"  # evaluated points, so an interrupted sweep picks up where it stopped
    cached = {(p["method"], p.get("setting"), p["step"]): p
              for p in map(json.loads, done.read_text().splitlines() if done.exists() else [])}
    todo = [("sft", None, 0, sft_dir)] + [(m, s, step, d) for m, s, f in folders for step, d in trajectory(f, args.steps)]
    points = []
    for method, setting, step, model_dir in todo:
        if (method, setting, step) not in cached:
            point = {"method": method, "setting": setting, "step": step,
                     **footing(model_dir, sft_dir, world, prompts, args)}
            with done.open("a") as f:
                f.write(json.dumps(point) + "\n")
            cached[(method, setting, step)] = point
            print(json.dumps(point), flush=True)
        points.append(cached[(method, setting, step)])
    # 3. Frontiers (both include the SFT point: KL 0 is reachable by either) and their comparison.
    fronts = {m: frontier([p for p in points if p["method"] in (m, "sft")]) for m in ("dpo", "ppo")}
    result = {"args": {k: v for k, v in vars(args).items()}, "points": points, "frontiers": fronts,
              "comparison": compare(points, fronts), "seconds": time.time() - started}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "frontier.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "frontier.md").write_text(markdown(points, result))
    plot(points, fronts, RESULTS / "frontier.png")
    print(markdown(points, result))


if __name__ == "__main__":
    main()

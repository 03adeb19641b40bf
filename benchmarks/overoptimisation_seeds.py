"""Experiment (issue 20, items 1-2): do the demo's over-optimisation curves show over-optimisation beyond noise?
Reads the runs of `benchmarks/sycophancy_seeds.py` (or any demo folders), prints per seed and tag:

    .venv/bin/python benchmarks/overoptimisation_seeds.py --root runs/syco --seeds 0,1,2 --tags before,after

- Best-of-n against the reward model (bon/samples.jsonl): gold at n = 1, its peak and n = N, the rise and the fall each
  against 2 paired standard errors (gain_se, drop_se: the estimates of every n come from the same samples), and
  the rmse of the Gao best-of-n fit d(α - βd) against the gain.
- PPO (ppo/metrics.jsonl, its held-out evaluations on 60 prompts): gold at the first evaluation, the peak and the
  last, the peak's margin over each against 2 standard errors of the difference (sqrt(se_a² + se_b²): separate
  samples), and the rmse of the Gao RL fit d(α - β log d) against the gain.
Written to <root>/overoptimisation-<bon>.json as well.

With --train-ppo (issue 20's PPO acceptance), the demo's PPO per seed with a larger held-out evaluation than the
demo can afford, then its figures:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overoptimisation_seeds.py --train-ppo --root runs/ppoprec \
        --seeds 0,1,2 --eval-prompts 264 --eval-samples 4 --eval-every 5 [--fixed-step 15] [--ppo-set lr=5e-5 ...] \
        [--label-set raters.obscure_knowledge=0.3 ...]

- Per seed the demo's stages (world to reward model, `tether demo`'s settings and building blocks, skipped when on
  disk), then its PPO with eval_prompts/eval_samples/eval_every replaced (temperature 1, the demo's; the evaluation
  has its own generator, so the trajectory is the demo's: compare kl/k1 step by step).
- Rise and fall are paired by prompt (eval_gold.jsonl: each prompt's mean gold, the same draw every evaluation), so
  their standard errors are those of the differences (`paired_difference`), not sqrt(se_a² + se_b²).
- The peak, the max of noisy evaluations, is biased upward (the max of 13 noisy means exceeds the true peak's mean
  even with a flat curve); so also the rise at a step fixed beforehand (`--fixed-step`: where the demo's seed-0
  PPO, evaluated on its 60 prompts, peaked) and the peak of a 3-evaluation moving average (paired as well).
- The Gao RL fit's rmse against the gain, with d = sqrt of the rollouts' KL at the evaluation's step, of its mean
  over the steps since the previous evaluation (one step's KL over 32 rollouts is noisy), and of eval/kl (the KL
  on the evaluation's own samples).
- The same rise and fall per held-out prompt category (fact, false_premise, harmful, ...): the policy can gain on one
  while it loses on another from the first steps, and the overall curve is their sum.
Written to <root>/ppo-precision.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch
from ensemble_seeds import shared_stages, with_settings

from tether.monitor.gao import fit_gao
from tether.monitor.stats import mean, paired_difference
from tether.stages import label as label_stage
from tether.stages import ppo, rm
from tether.stages.online import EVAL_GOLD_FILE
from tether.report.findings import bon_fit, bon_shape, paired_shape
from tether.stages.bon import bon_curve

Z = 2.0
"""Standard errors a difference must exceed to count."""


def bon_curve_of(folder: Path) -> list[dict]:
    """bon.json's curve, recomputed from samples.jsonl (the paired standard errors of runs older than them)."""
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line]
    proxy = torch.tensor([r["proxy"] for r in rows], dtype=torch.float64)
    return bon_curve(proxy, torch.tensor([r["gold"] for r in rows], dtype=torch.float64))


def bon_figures(folder: Path) -> dict:
    curve = bon_curve_of(folder)
    shape, fit = bon_shape(curve, Z), bon_fit(curve)
    peak = next(p for p in curve if p["n"] == shape["peak_n"])
    first, last = curve[0], curve[-1]
    return {"N": last["n"], "gold_1": first["gold"], "peak_n": peak["n"], "peak": peak["gold"], "gold_N": last["gold"],
            "rise": shape["rise"], "rise_se": peak["gain_se"], "drop": shape["drop"], "drop_se": peak["drop_se"],
            "rose": shape["rose"], "fell": shape["fell"], "proxy_1": first["proxy"], "proxy_N": last["proxy"],
            "sqrt_kl_N": last["sqrt_kl"], "fit_rmse": fit.rmse if fit else None,
            "fit_d_peak": fit.d_peak if fit else None}


def ppo_figures(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    kl = {r["step"]: r.get("kl/k1") for r in rows if r.get("kl/k1") is not None}
    pts = [(r["step"], max(0.0, kl.get(r["step"]) or 0.0) ** 0.5, r["eval/gold"], r["eval/gold_se"], r["eval/score"])
           for r in rows if r.get("eval/gold") is not None]
    start, end = pts[0], pts[-1]
    peak = max(pts, key=lambda p: p[2])
    rise, drop = peak[2] - start[2], peak[2] - end[2]
    rise_se, drop_se = math.hypot(peak[3], start[3]), math.hypot(peak[3], end[3])
    try:
        fit = fit_gao([p[1] for p in pts], [p[2] - start[2] for p in pts], "rl")
    except ValueError:
        fit = None
    return {"evals": len(pts), "start": start[2], "peak_step": peak[0], "peak": peak[2], "end_step": end[0],
            "end": end[2], "rise": rise, "rise_se": rise_se, "drop": drop, "drop_se": drop_se,
            "rose": rise > Z * rise_se, "fell": drop > Z * drop_se, "proxy_start": start[4], "proxy_end": end[4],
            "sqrt_kl_end": end[1], "fit_rmse": fit.rmse if fit else None,
            "fit_under_third": bool(fit and rise > 0 and fit.rmse < rise / 3)}


def train_ppo(seed: int, root: Path, args) -> Path:
    """The demo's stages of one seed up to the reward model (skipped when on disk), then the demo's PPO with the
    larger evaluation of `args`; returns its folder."""
    stages = shared_stages(seed, root, None)
    base = root / f"seed{seed}"
    if not (base / "label/comparisons.jsonl").exists():
        print(f"== seed {seed}: label", flush=True)
        label_stage.run(with_settings(stages["label"], args.label_set, base / "label-settings"))
    if not (base / "rm/model/reward_config.json").exists():
        print(f"== seed {seed}: rm", flush=True)
        rm.run(stages["rm"])
    tag = "".join(f"-{o.replace('=', '')}" for o in args.ppo_set)
    folder = base / f"ppo-eval{args.eval_prompts}x{args.eval_samples}-every{args.eval_every}{tag}"
    if not (folder / "model/model.safetensors").exists():
        print(f"== seed {seed}: ppo -> {folder}", flush=True)
        ppo.run(with_settings(replace(stages["ppo"], eval_prompts=args.eval_prompts, eval_samples=args.eval_samples,
                                      eval_every=args.eval_every, out=str(folder), resume=True), args.ppo_set, folder))
    return folder


def _smoothed(per: dict[int, list], steps: list[int], i: int) -> list:
    """Each prompt's mean gold over evaluations i - 1, i, i + 1 (those that exist)."""
    window = [per[steps[j]] for j in range(max(0, i - 1), min(len(steps), i + 2))]
    return [mean(xs) for xs in zip(*window)]


def _fit_rmse(d: list[float], gain: list[float]) -> float | None:
    try:
        return fit_gao(d, gain, "rl").rmse
    except ValueError:
        return None


def paired_figures(folder: Path, fixed_step: int, until: int | None = None) -> dict:
    """Gold start, peak, end, rise and fall with paired standard errors (eval_gold.jsonl, `paired_shape`), the rise
    at `fixed_step` and at the peak of the 3-evaluation moving average, and the Gao fit's rmse with d from the
    step's KL and from the KL averaged since the previous evaluation. With `until`, of the run's steps up to it
    only: at a constant learning rate (the demo's PPO) that is the run max_steps=until would have made."""
    keep = (lambda r: r["step"] <= until) if until else (lambda r: True)
    rows = [r for r in (json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x) if keep(r)]
    per = {r["step"]: r["gold"] for r in map(json.loads, (folder / EVAL_GOLD_FILE).read_text().splitlines())
           if keep(r)}
    shape, steps = paired_shape(per, Z), sorted(per)
    start, end = steps[0], steps[-1]
    kl = {r["step"]: r["kl/k1"] for r in rows if r.get("kl/k1") is not None}
    se = {r["step"]: r["eval/gold_se"] for r in rows if r.get("eval/gold_se") is not None}

    def diff(a: list, b: list) -> dict:
        d, d_se = paired_difference(a, b)
        return {"value": d, "se": d_se, "beyond_2se": d > Z * d_se}

    smooth = {t: _smoothed(per, steps, i) for i, t in enumerate(steps)}
    smooth_peak = max(steps[1:], key=lambda t: mean(smooth[t]))
    d_step = [max(0.0, kl.get(t, 0.0)) ** 0.5 for t in steps]
    d_mean = [0.0] + [max(0.0, mean([kl.get(u) for u in range(a + 1, b + 1)]) or 0.0) ** 0.5
                      for a, b in zip(steps, steps[1:])]
    eval_kl = {r["step"]: r["eval/kl"] for r in rows if r.get("eval/kl") is not None}
    d_eval = [max(0.0, eval_kl[t]) ** 0.5 for t in steps] if all(t in eval_kl for t in steps) else None
    gain = [mean(per[t]) - shape["start"] for t in steps]
    return {"prompts": shape["prompts"], "evals": len(steps), "start": shape["start"], "peak_step": shape["peak_step"],
            "peak": shape["peak"], "end_step": end, "end": shape["end"],
            "rise": {"value": shape["rise"], "se": shape["rise_se"], "beyond_2se": shape["rose"]},
            "fall": {"value": shape["drop"], "se": shape["drop_se"], "beyond_2se": shape["fell"]},
            "rise_unpaired_se": math.hypot(se[shape["peak_step"]], se[start]),
            "fixed_step": fixed_step, "fixed_rise": diff(per[fixed_step], per[start]) if fixed_step in per else None,
            "smoothed_peak_step": smooth_peak, "smoothed_rise": diff(smooth[smooth_peak], per[start]),
            "smoothed_fall": diff(smooth[smooth_peak], per[end]),
            "fit_rmse_step_kl": _fit_rmse(d_step, gain), "fit_rmse_mean_kl": _fit_rmse(d_mean, gain),
            "fit_rmse_eval_kl": _fit_rmse(d_eval, gain) if d_eval else None,
            "curve": [{"step": t, "gold": mean(per[t]), "sqrt_kl_step": a, "sqrt_kl_mean": b,
                       "sqrt_kl_eval": d_eval[i] if d_eval else None}
                      for i, (t, a, b) in enumerate(zip(steps, d_step, d_mean))]}


def _d(x: dict | None) -> str:
    return "n/a" if x is None else f"{x['value']:+.3f} ± {Z * x['se']:.3f}{' yes' if x['beyond_2se'] else ' no'}"


def precision_table(out: dict) -> str:
    lines = ["| seed | start | peak (step) | end | rise ± 2se | fall ± 2se | rise at fixed step | smoothed peak "
             "(step): rise, fall | Gao rmse (step KL / mean KL / eval KL) vs gain/3 |", "|---|---|---|---|---|---|---|---|---|"]
    for seed, f in out.items():
        rmse = " / ".join("n/a" if x is None else f"{x:.3f}" for x in (f["fit_rmse_step_kl"], f["fit_rmse_mean_kl"],
                                                                 f.get("fit_rmse_eval_kl")))
        lines.append(f"| {seed} | {f['start']:+.3f} | {f['peak']:+.3f} ({f['peak_step']}) | {f['end']:+.3f} | "
                     f"{_d(f['rise'])} | {_d(f['fall'])} | {_d(f['fixed_rise'])} | ({f['smoothed_peak_step']}) "
                     f"{_d(f['smoothed_rise'])}, {_d(f['smoothed_fall'])} | {rmse} vs {f['rise']['value'] / 3:.3f} |")
    return "\n".join(lines) + "\n"


def category_figures(folder: Path, world: Path, curve: list[dict], until: int | None = None) -> dict:
    """paired_shape of each held-out prompt category (world/eval.jsonl's, in eval_gold.jsonl's order: the run
    evaluated all of them): where gold rises and falls, which the overall mean sums; and the Gao RL fit of each
    category's gain against the policy's √KL on the evaluation's samples (`curve`'s sqrt_kl_eval, all categories')."""
    cats = [json.loads(x)["category"] for x in (world / "eval.jsonl").read_text().splitlines() if x]
    per = {r["step"]: r["gold"] for r in map(json.loads, (folder / EVAL_GOLD_FILE).read_text().splitlines())
           if not until or r["step"] <= until}
    if any(len(g) != len(cats) for g in per.values()):
        return {}
    d = {p["step"]: p["sqrt_kl_eval"] for p in curve}
    out = {}
    for c in sorted(set(cats)):
        own = {t: [x for x, k in zip(g, cats) if k == c] for t, g in per.items()}
        shape, steps = paired_shape(own, Z), sorted(own)
        gain = [mean(own[t]) - shape["start"] for t in steps]
        rmse = _fit_rmse([d[t] for t in steps], gain) if all(d.get(t) is not None for t in steps) else None
        out[c] = {**shape, "fit_rmse_eval_kl": rmse}
    return out


def category_table(seeds: dict) -> str:
    def cell(f: dict) -> str:
        return (f"{f['start']:+.2f} -> {f['peak']:+.2f} ({f['peak_step']}) -> {f['end']:+.2f}; rise {f['rise']:+.2f} ± "
                f"{Z * f['rise_se']:.2f}{' yes' if f['rose'] else ''}, fall {f['drop']:+.2f} ± {Z * f['drop_se']:.2f}"
                f"{' yes' if f['fell'] else ''}; Gao rmse "
                + ("n/a" if f.get("fit_rmse_eval_kl") is None else f"{f['fit_rmse_eval_kl']:.3f}")
                + f" vs gain/3 {f['rise'] / 3:.3f}")
    cats = sorted({c for f in seeds.values() for c in f.get("categories", {})})
    lines = ["| category | " + " | ".join(seeds) + " |", "|---|" + "---|" * len(seeds)]
    lines += [f"| {c} | " + " | ".join(cell(f["categories"][c]) if c in f.get("categories", {}) else "n/a"
                                      for f in seeds.values()) + " |" for c in cats]
    return "\n".join(lines) + "\n"


def precision_main(args) -> int:
    root, out = Path(args.root), {}
    for seed in (int(s) for s in args.seeds.split(",")):
        folder = train_ppo(seed, root, args)
        out[f"s{seed}"] = paired_figures(folder, args.fixed_step, args.until)
        out[f"s{seed}"]["categories"] = category_figures(folder, root / f"seed{seed}/world", out[f"s{seed}"]["curve"],
                                                         args.until)
        (root / "ppo-precision.json").write_text(json.dumps({"args": vars(args), "seeds": out}, indent=1))
        print(precision_table({f"s{seed}": out[f"s{seed}"]}), flush=True)
    print(precision_table(out))
    print(category_table(out))
    return 0


def _line(name: str, f: dict, level: str, first: str, last: str) -> str:
    rmse = "n/a" if f["fit_rmse"] is None else f"{f['fit_rmse']:.3f}"
    return (f"  {name}: gold {f[first]:+.3f} -> peak {f['peak']:+.3f} ({level}) -> {f[last]:+.3f}; rise "
            f"{f['rise']:+.3f} (2se {Z * f['rise_se']:.3f}, {'yes' if f['rose'] else 'no'}), fall {f['drop']:+.3f} "
            f"(2se {Z * f['drop_se']:.3f}, {'yes' if f['fell'] else 'no'}); Gao fit rmse {rmse} "
            f"(gain/3 {f['rise'] / 3:.3f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/syco")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tags", default="before,after")
    p.add_argument("--bon", default="bon", help="the best-of-n folder in each run (e.g. bon64: `tether bon n=64`)")
    p.add_argument("--train-ppo", action="store_true", help="run the demo's PPO per seed with a larger evaluation")
    p.add_argument("--eval-prompts", type=int, default=264, help="held-out prompts per evaluation (the world has 264)")
    p.add_argument("--eval-samples", type=int, default=4, help="responses per prompt, temperature 1 (the demo: 4)")
    p.add_argument("--eval-every", type=int, default=5, help="steps between evaluations (the demo: 3)")
    p.add_argument("--fixed-step", type=int, default=15, help="the rise reported at this step as well (pre-registered)")
    p.add_argument("--until", type=int, help="with --train-ppo: figures of the steps up to this one only")
    p.add_argument("--ppo-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="with --train-ppo: settings over the demo's PPO (e.g. value_model=head lr=5e-5)")
    p.add_argument("--label-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="with --train-ppo: settings over the demo's labelling, e.g. raters.obscure_knowledge=0.3 "
                        "(give the run its own --root: stages on disk are kept)")
    args = p.parse_args(argv)
    if args.train_ppo:
        return precision_main(args)
    root, out = Path(args.root), {}
    for tag in args.tags.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            base = root / f"s{seed}-{tag}" if tag else root / f"s{seed}"
            rec = {}
            if (base / args.bon / "samples.jsonl").exists():
                rec["bon"] = bon_figures(base / args.bon)
            if (base / "ppo/metrics.jsonl").exists():
                rec["ppo"] = ppo_figures(base / "ppo/metrics.jsonl")
            out[f"{tag}/s{seed}"] = rec
            print(f"{tag} seed {seed}:")
            if "bon" in rec:
                print(_line(f"best-of-{rec['bon']['N']}", rec["bon"], f"n={rec['bon']['peak_n']}", "gold_1", "gold_N"))
            if "ppo" in rec:
                print(_line("ppo", rec["ppo"], f"step {rec['ppo']['peak_step']}", "start", "end"))
    (root / f"overoptimisation-{args.bon}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from tether.monitor.gao import fit_gao
from tether.report.findings import bon_fit, bon_shape
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
    args = p.parse_args(argv)
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

"""One command for the benchmark table: every bench at each size, tether beside TRL, then table.py.

    .venv/bin/python benchmarks/run_all.py [--sizes 5m,30m] [--only sft,rm,dpo,ppo,grpo,rloo,rollout] [--quick]
                                           [--results-dir DIR] [--threads 1]

(`make bench`, `make bench SIZES=5m`, `make bench BENCH_ARGS=--quick`.) Each bench creates the TRL environments it
needs on first use (`.peer`: current TRL; `.peer19`: TRL 1.9.0, the last with PPO) and builds its inputs (the tiny
world's data, a fresh Llama of the size) in a temp folder, so every stage of a size runs on the same model, data and
settings on both sides. One bench runs at a time (they time themselves; two at once would slow each other), sizes in
order, so an interrupted run leaves a complete smaller size. A bench that fails is reported and skipped: the table
shows its rows as "not run" and the command exits non-zero.

Step counts: the benches' own defaults at 5m; fewer steps at 30m, whose steps are about 7x slower (see PLAN).
`--quick` runs 3 steps (1 warm-up) and one round per side: a check that everything runs end to end, not a
measurement; its results go to benchmarks/results/quick/ unless --results-dir says otherwise.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import table
from common import RESULTS, ROOT

BENCH = ROOT / "benchmarks"
# stage -> (script, its own arguments); run_all adds the size, steps, threads and results folder.
STAGES = {
    "sft": ("bench_sft.py", []),
    "rm": ("bench_rm.py", ["--data", "unique"]),
    "rm-rated": ("bench_rm.py", ["--data", "rated"]),
    "dpo": ("bench_dpo.py", ["--trl-precompute"]),
    "ppo": ("bench_online.py", ["--algo", "ppo"]),
    "grpo": ("bench_online.py", ["--algo", "grpo"]),
    "rloo": ("bench_online.py", ["--algo", "rloo"]),
    "rollout": ("bench_rollout.py", []),
}
# (script, size) -> step arguments; a script not listed for a size runs with its defaults.
PLAN = {
    ("bench_sft.py", "30m"): ["--steps", 25, "--warmup", 5],
    ("bench_rm.py", "30m"): ["--steps", 20, "--warmup", 5],
    ("bench_dpo.py", "30m"): ["--steps", 20, "--warmup", 4],
    ("bench_online.py", "30m"): ["--steps", 6, "--warmup", 2],
    ("bench_rollout.py", "30m"): ["--rounds", 5],
}
QUICK = {
    "bench_rollout.py": ["--rounds", 1, "--batch", 8, "--new-tokens", 8],
    "bench_dpo.py": ["--steps", 3, "--warmup", 1, "--rounds", 1, "--pairs-per-prompt", 1],
}
QUICK_DEFAULT = ["--steps", 3, "--warmup", 1, "--rounds", 1]


def command(stage: str, size: str, args) -> list[str]:
    """The command line of `stage` at `size`."""
    script, own = STAGES[stage]
    steps = QUICK.get(script, QUICK_DEFAULT) if args.quick else PLAN.get((script, size), [])
    sized = ["--sizes", size] if script == "bench_rollout.py" else ["--size", size]
    return [sys.executable, str(BENCH / script), *own, *sized, *map(str, steps), "--threads", str(args.threads),
            "--results-dir", str(args.results_dir)]


def run(stage: str, size: str, args) -> tuple[bool, float]:
    """Run one bench, its output streamed; whether it succeeded and how long it took."""
    cmd = command(stage, size, args)
    print(f"\n===== {stage} {size}: $ {' '.join(cmd)}", flush=True)
    started = time.time()
    ok = subprocess.run(cmd, check=False).returncode == 0
    return ok, time.time() - started


def main() -> None:
    p = argparse.ArgumentParser(description="every tether vs TRL benchmark at each size, then the table")
    p.add_argument("--sizes", default=",".join(table.SIZES), help="comma- or space-separated: 5m, 30m")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages, from {', '.join(STAGES)}")
    p.add_argument("--quick", action="store_true",
                   help="3 steps, one round: a check that everything runs, not a measurement")
    p.add_argument("--threads", type=int, default=1, help="torch threads per side (see the benches' --threads)")
    p.add_argument("--results-dir", type=Path, help="where the result JSONs and the table go (default "
                   f"{RESULTS.relative_to(ROOT)}, or its quick/ subfolder with --quick)")
    args = p.parse_args()
    sizes, stages = table.parse_sizes(args.sizes), args.only.split(",")
    if any(s not in STAGES for s in stages):
        sys.exit(f"--only: choose from {', '.join(STAGES)}")
    if args.results_dir is None:
        args.results_dir = RESULTS / "quick" if args.quick else RESULTS

    log = []
    for size in sizes:
        for stage in stages:
            log.append((stage, size, *run(stage, size, args)))
    print("\n===== runs")
    for stage, size, ok, seconds in log:
        print(f"{stage:<10}{size:<5}{'ok' if ok else 'FAILED':<8}{seconds:>7.0f}s")
    print(f"\n{table.write(args.results_dir, sizes)}")
    print(f"wrote {args.results_dir / 'table.md'} and table.json")
    if not all(ok for _, _, ok, _ in log):
        sys.exit("some benchmarks failed: their rows read 'not run'")


if __name__ == "__main__":
    main()

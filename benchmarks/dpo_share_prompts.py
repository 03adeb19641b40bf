"""Experiment (issue 21): how much of its bound does DPO's prompt sharing reach? tether's DPO with share_prompts on
(each prompt and its responses in one row, `tether.prefix_tree`), on in its cached form (the responses after the
prompt's keys and values, what attention without custom masks gets) and off, alternating, on the same inputs as
bench_dpo.py (one thread, steady state):

    .venv/bin/python benchmarks/dpo_share_prompts.py [--size 5m|30m] [--steps 30] [--warmup 6] [--rounds 2] [--data world|hh]

Sharing runs each prompt once for both responses, so it skips prompt tokens / all tokens of both sequences (half the
prompts' share of a sequence): 1 / (1 - that) is its bound at equal per-token speed, printed beside the measured ratios (median of per-step rates,
pairs over total time, pairs per CPU-second).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_dpo


# the worker with the rows form switched off: `logprobs.tree_shares` answers False, so sharing takes the cached form
CACHED = ("import runpy, sys, tether.logprobs as lp; lp.tree_shares = lambda model: False; sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")
VARIANTS = {"rows": ("true", []), "cached": ("true", ["-c", CACHED]), "off": ("false", [])}


def rates(result: dict, warmup: int) -> dict:
    steps, before = result["steps"][warmup:], result["steps"][warmup - 1]
    pairs = sum(s["pairs"] for s in steps)
    per_step = [s["pairs"] / (s["time"] - a["time"]) for a, s in zip(result["steps"][warmup - 1:], steps)]
    return {"median": statistics.median(per_step), "total": pairs / (steps[-1]["time"] - before["time"]),
            "cpu": pairs / (steps[-1]["cpu"] - before["cpu"])}


def skipped_share(folder: Path) -> float:
    """Prompt tokens / all tokens of the pairs' two sequences, as tether encodes them: the share of the tokens
    sharing does not run (each prompt once instead of twice)."""
    from tether.chat import chat_format
    from tether.data.formats import load_comparisons
    from tether.models import load_tokenizer

    fmt = chat_format(load_tokenizer(str(folder / "model")))
    skipped = total = 0
    for c in load_comparisons(folder / "prefs.jsonl", labelled=True):
        a, b = fmt.encode_many([(c.prompt, c.response_a), (c.prompt, c.response_b)])
        skipped += len(fmt.prompt_ids(c.prompt))
        total += len(a.input_ids) + len(b.input_ids)
    return skipped / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(bench_dpo.SIZES), default="5m")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", choices=["world", "hh"], default="world")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tether-dpo-share-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out: dict[str, list] = {name: [] for name in VARIANTS}
    try:
        bench_dpo.prepare(folder, 2, args.size, args.data, 200)
        for _ in range(args.rounds):
            for name, (share, wrapper) in VARIANTS.items():
                shutil.rmtree(folder / "tether-run", ignore_errors=True)  # no reference cache carried over
                subprocess.run([sys.executable, *wrapper, bench_dpo.__file__, "--steps", str(args.steps),
                                "--tether-set", f"share_prompts={share}", "--tether-worker", str(folder),
                                str(folder / "out.json")], env={**env, "PYTHONPATH": os.pathsep.join(
                                    filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))},
                               check=True)
                out[name].append(rates(json.loads((folder / "out.json").read_text()), args.warmup))
                print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in out[name][-1].items()) + " pairs/s",
                      flush=True)
        skipped = skipped_share(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    best = {s: {k: max(r[k] for r in rs) for k in ("median", "total", "cpu")} for s, rs in out.items()}
    print(f"\n{args.size} {args.data}: sharing skips {skipped:.1%} of the tokens, bound {1 / (1 - skipped):.2f}x")
    for name in ("rows", "cached"):
        print(f"sharing ({name}) / off, best round of each: " + ", ".join(
            f"{k} {best[name][k] / best['off'][k]:.2f}x" for k in ("median", "total", "cpu")))


if __name__ == "__main__":
    main()

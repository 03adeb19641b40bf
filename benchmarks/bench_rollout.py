"""Benchmark: rollout speed of `tether.rollout.sample` against Hugging Face `generate`, ratio printed.

    .venv/bin/python benchmarks/bench_rollout.py [--sizes 5m,30m] [--batch 64] [--new-tokens 48] [--rounds 7]
                                                 [--stop-tokens N] [--compile] [--results-dir DIR] [--out FILE]

1. Build the shared inputs once: a BPE tokenizer trained on the tiny world's pretraining corpus (saved to a
   temp folder) and `--batch` chat prompts from the world's train queries (`encode_prompt`, 9 to 17 tokens).
2. Speed, one process per size: the same untrained model (seed 0, fp32) and prompts for every side:
   `generate` (do_sample, temperature 1, top_k 0, top_p 1, HF's DynamicCache) and `sample` with a dynamic
   and with a static cache (`--compile`: and the static cache compiled, Inductor on a CPU, no CUDA graphs; GPU:
   benchmarks/gpu_rollout.py). One warm-up rollout per side (its time is printed: the compiling), then
   `--rounds` rounds of one rollout per side, the order rotating. Sides alternate within seconds because the
   load from other processes on a shared machine drifts by 1.5x over minutes: separate processes per side
   measured the drift, not the code.
3. Tokens are generated non-pad tokens, EOS included: an untrained model rarely emits EOS, so both sides run
   close to the full length; `--stop-tokens N` also stops every side at the N tokens a probe rollout drew most
   often, so that rows end at varied lengths as chat responses do (where `sample` drops finished rows from its
   batch and `generate` keeps decoding them; the probe runs in every worker before its warm-up and RSS figures).
   A side's tokens/s is the median over rounds; its ratio to `generate`, the median of same-round ratios. MFU:
   nominal forward FLOPs of the real (prompt and generated) tokens per second over the fp32 matmul peak
   (2048x2048) measured in the speed worker, before and after its rollouts (the best).
4. Peak RSS, one process per side (RSS does not drift with load): after setup and after two rollouts.
5. The "GEMM floor": the model's linear layers alone (lm_head included) at batch B and one token per step,
   the best a decoder running these fp32 matmuls one token at a time could do. `--profile` adds where one
   rollout's time goes, by kind of op.
6. Write benchmarks/results/rollout-<size>.json per size (--results-dir), and all sizes as a list to `--out`.

Absolute figures drift on a shared machine: compare only ratios measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import add_results_arg, matmul_peak, register_presets, rss_mb, write_result

SIZES = {"demo": "demo", **common.SIZES}  # --sizes name -> tether preset
SIDES = ("generate", "sample-dynamic", "sample-static")
COMPILED = "sample-compiled"  # --compile: the static cache with compile=True (Inductor on a CPU: no CUDA graphs)
SEED = 0
# aten op -> kind of work in the --profile breakdown; any other aten op is "other ops".
CATEGORIES = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "attention",
              "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::_softmax": "attention",
              "aten::cat": "kv cache", "aten::index_copy_": "kv cache",
              "aten::multinomial": "sampling", "aten::exponential_": "sampling", "aten::searchsorted": "sampling",
              "aten::cumsum": "sampling", "aten::logsumexp": "sampling"}


# ---------------------------------------------------------------------------------------------
# 1. Shared inputs


def prepare(folder: Path, batch: int) -> None:
    """Write tokenizer/ and prompts.json (token ids) under `folder`."""
    from tether.chat import chat_format
    from tether.tokenizer import train_tokenizer
    from tether.world.world import World, WorldConfig

    world = World(WorldConfig())
    texts = (t for row in world.pretraining_corpus()
             for t in ([row["text"]] if "text" in row else [m["content"] for m in row["messages"]]))
    tokenizer = train_tokenizer(texts)
    tokenizer.save_pretrained(folder / "tokenizer")
    queries = world.train_queries()[:batch]
    if len(queries) < batch:
        sys.exit(f"--batch {batch}: the world has only {len(queries)} train prompts")
    prompts = [chat_format(tokenizer).prompt_ids([{"role": "user", "content": q.text}]) for q in queries]
    (folder / "prompts.json").write_text(json.dumps(prompts))


# ---------------------------------------------------------------------------------------------
# 2-5. Workers


def load(folder: Path, preset: str, new_tokens: int, stop_tokens: int = 0):
    """The model, the prompts (token ids), and `rollout(side, seed) -> generated non-pad tokens`."""
    import torch

    from tether.generation import left_pad
    from tether.models import build_model, load_tokenizer
    from tether.rollout import sample

    tokenizer = load_tokenizer(str(folder / "tokenizer"))
    prompts = json.loads((folder / "prompts.json").read_text())
    register_presets()  # bench-30m
    model = build_model(preset, tokenizer, seed=SEED).eval()
    pad = tokenizer.pad_token_id
    eos = stop_ids(model, prompts, tokenizer, new_tokens, stop_tokens)
    ids, mask = left_pad(prompts, pad)

    def rollout(side: str, seed: int) -> int:
        if side == "generate":
            torch.manual_seed(seed)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad)
            return int((out[:, ids.size(1):] != pad).sum())
        cache = "static" if side == COMPILED else side.removeprefix("sample-")
        r = sample(model, prompts, max_new_tokens=new_tokens, temperature=1.0, eos_token_id=eos, pad_token_id=pad,
                   generator=torch.Generator().manual_seed(seed), cache=cache, compile=side == COMPILED)
        return int(r.lengths.sum())

    return model, prompts, rollout


def stop_ids(model, prompts: list[list[int]], tokenizer, new_tokens: int, extra: int) -> list[int]:
    """EOS and, with `extra` > 0, the `extra` tokens an untrained model draws most often (a probe rollout, seed -1)
    as stop tokens for every side: an untrained model rarely emits EOS, so without them every row runs the full
    length, where a chat model's responses end at lengths of their own (the finished rows `sample` drops)."""
    import collections

    import torch

    from tether.rollout import sample

    eos = tokenizer.eos_token_id
    if not extra:
        return [eos]
    probe = sample(model, prompts, max_new_tokens=new_tokens, temperature=1.0, eos_token_id=eos,
                   pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(SEED - 1))
    counts = collections.Counter(probe.response_ids[probe.response_mask.bool()].tolist())
    counts.pop(eos, None)
    counts.pop(tokenizer.pad_token_id, None)  # both sides count a row's tokens as its non-pad ones
    return [eos] + [token for token, _ in counts.most_common(extra)]


def gemm_floor(model, batch: int, repeats: int = 50) -> float:
    """Seconds per decoding step spent in the model's nn.Linear layers alone (median over `repeats`)."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, m.in_features) for m in layers]
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for m, x in zip(layers, inputs):
                torch.nn.functional.linear(x, m.weight)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def breakdown(fn) -> dict:
    """Seconds of one call of `fn` by kind of aten op (self CPU time), plus the rest ("python").

    "python" is the wall time under the profiler left over by the ops: interpreter, module calls, dispatch.
    The profiler slows small ops a little, so read the shares, not the absolute figures. The first profiled
    call of a process inflates allocation-heavy ops (a DynamicCache's `cat` 6x), so the second is kept.
    """
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            fn()
            wall = time.perf_counter() - t
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            key = CATEGORIES.get(e.key, "other ops")
            out[key] = out.get(key, 0.0) + e.self_cpu_time_total / 1e6
    out["python"] = max(0.0, wall - sum(out.values()))
    out["wall"] = wall
    return out


def forward_flops_per_token(model, prompts: list[list[int]], new_tokens: int) -> float:
    """Nominal forward FLOPs per token of a rollout: a third of PaLM's training count (`model_flops_per_token`:
    2N + 4LHT forward), T the mean context while decoding (prompt + half the new tokens)."""
    from tether.models import model_flops_per_token

    context = sum(map(len, prompts)) / len(prompts) + new_tokens / 2
    return model_flops_per_token(model, round(context)) / 3


def speed_worker(folder: Path, preset: str, args) -> dict:
    """Rounds of one rollout per side, order rotating; per side its rates, tokens and optional breakdown."""
    import torch
    import transformers

    from tether.models import count_parameters

    model, prompts, rollout = load(folder, preset, args.new_tokens, args.stop_tokens)
    batch = len(prompts)
    peak = matmul_peak()
    sides, warmup = all_sides(args), {}
    for side in sides:
        t = time.perf_counter()
        rollout(side, SEED)  # warm-up: allocator, thread pool, lazy HF init; compiling, for the compiled side
        warmup[side] = time.perf_counter() - t
    result = {side: {"rates": [], "tokens": [], "warmup_s": warmup[side]} for side in sides}
    for r in range(args.rounds):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            t = time.perf_counter()
            n = rollout(side, SEED + 1 + r)
            result[side]["rates"].append(n / (time.perf_counter() - t))
            result[side]["tokens"].append(n)
    if args.profile:
        for side in sides:
            result[side]["breakdown"] = breakdown(lambda: rollout(side, SEED))  # noqa: B023 (called at once)
    return {"sides": result, "parameters": count_parameters(model), "threads": torch.get_num_threads(),
            "gemm_floor_tokens_per_s": batch / gemm_floor(model, batch), "load": os.getloadavg()[0],
            "peak_flops": max(peak, matmul_peak()),  # other processes only ever lower it: keep the best
            "prompt_tokens": sum(map(len, prompts)),
            "forward_flops_per_token": forward_flops_per_token(model, prompts, args.new_tokens),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def all_sides(args) -> tuple[str, ...]:
    return SIDES + (COMPILED,) * args.compile


def rss_worker(folder: Path, preset: str, side: str, args) -> dict:
    _, _, rollout = load(folder, preset, args.new_tokens, args.stop_tokens)
    setup = rss_mb()
    rollout(side, SEED)
    rollout(side, SEED + 1)
    return {"rss_setup_mb": setup, "peak_rss_mb": rss_mb()}


def run_worker(folder: Path, size: str, args, side: str | None = None) -> dict:
    """Run this file as a speed worker (side None) or an RSS worker for `side`, in its own process."""
    out = folder / f"{size}-{side or 'speed'}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TETHER_QUIET": "1",
           "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", str(folder), SIZES[size], side or "speed", str(out),
           "--new-tokens", str(args.new_tokens), "--stop-tokens", str(args.stop_tokens), "--rounds", str(args.rounds),
           *(["--profile"] * args.profile),
           *(["--compile"] * args.compile)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-4000:])
        sys.exit(f"worker failed: {' '.join(cmd)}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# Report


def mfu(side: dict, speed: dict) -> float:
    """Median over rounds of the nominal forward FLOP/s of a rollout's real tokens (prompts + generated) / peak."""
    prompt, per_token = speed["prompt_tokens"], speed["forward_flops_per_token"]
    return statistics.median(r * (n + prompt) / n for r, n in zip(side["rates"], side["tokens"])) \
        * per_token / speed["peak_flops"]


def report(size: str, speed: dict, rss: dict, args) -> dict:
    """Print one size's table, ratios and optional breakdown; return its summary."""
    sides, base = speed["sides"], speed["sides"]["generate"]["rates"]
    rows = {side: {"tokens_per_s": statistics.median(s["rates"]),
                   "vs_generate": statistics.median(r / g for r, g in zip(s["rates"], base)),
                   "tokens": statistics.mean(s["tokens"]), "mfu": mfu(s, speed), "warmup_s": s["warmup_s"],
                   **rss[side]}
            for side, s in sides.items()}
    floor = speed["gemm_floor_tokens_per_s"]
    print(f"\n{size} preset ({speed['parameters'] / 1e6:.2f}M parameters), batch {args.batch}, {args.new_tokens} "
          f"new tokens, {speed['threads']} thread(s), {args.rounds} rounds"
          + (f", EOS and {args.stop_tokens} more stop tokens" if args.stop_tokens else ""))
    print(f"{'side':<16}{'tokens/s':>10}{'vs generate':>13}{'tokens/rollout':>16}{'RSS setup MB':>14}"
          f"{'peak RSS MB':>13}{'MFU':>8}{'warm-up s':>11}")
    for side, r in rows.items():
        print(f"{side:<16}{r['tokens_per_s']:>10.0f}{r['vs_generate']:>12.2f}x{r['tokens']:>16.0f}"
              f"{r['rss_setup_mb']:>14.0f}{r['peak_rss_mb']:>13.0f}{100 * r['mfu']:>7.2f}%{r['warmup_s']:>11.1f}")
    print(f"{'GEMM floor':<16}{floor:>10.0f}{floor / rows['generate']['tokens_per_s']:>12.2f}x   "
          "(the linear layers alone, one token per step)")
    print("tokens/s, MFU: medians over rounds; vs generate: median of same-round ratios; MFU: forward FLOPs of "
          f"prompt + generated tokens / fp32 matmul peak ({speed['peak_flops'] / 1e9:.1f} GFLOP/s, 2048x2048)")
    if args.profile:
        print_breakdown({side: s["breakdown"] for side, s in sides.items()}, args.new_tokens)
    notes = []
    if speed["load"] > (os.cpu_count() or 1):
        notes.append(f"machine busy: 1-min load average {speed['load']:.1f} on {os.cpu_count()} cores; figures are "
                     "noisy")
        print(notes[-1])
    return {"size": size, "parameters": speed["parameters"], "batch": args.batch, "new_tokens": args.new_tokens,
            "stop_tokens": args.stop_tokens,
            "rounds": args.rounds, "peak_flops": speed["peak_flops"], "versions": speed["versions"], "sides": rows,
            "gemm_floor_tokens_per_s": floor, "differences": notes, "raw": speed}


def print_breakdown(splits: dict[str, dict], new_tokens: int) -> None:
    """Per side, one profiled rollout split by kind of op: ms per decoding step and share of its wall time."""
    keys = sorted({k for s in splits.values() for k in s} - {"wall"}, key=lambda k: -splits["generate"].get(k, 0))
    print(f"\nwhere the time goes: one profiled rollout, ms per step (wall / {new_tokens}) and share of its wall")
    print(f"{'':<16}" + "".join(f"{k:>16}" for k in keys) + f"{'wall':>10}")
    for side, split in splits.items():
        cells = [f"{1e3 * split.get(k, 0) / new_tokens:.2f} ({100 * split.get(k, 0) / split['wall']:.0f}%)"
                 for k in keys]
        print(f"{side:<16}" + "".join(f"{c:>16}" for c in cells) + f"{1e3 * split['wall'] / new_tokens:>10.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description="tether.rollout.sample vs HF generate throughput (CPU, fp32)")
    p.add_argument("--sizes", default="5m,30m", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--batch", type=int, default=64, help="prompts per rollout")
    p.add_argument("--new-tokens", type=int, default=48, help="max_new_tokens on every side")
    p.add_argument("--stop-tokens", type=int, default=0,
                   help="also stop at the N tokens an untrained model draws most often, so rows end at varied "
                        "lengths as chat responses do (0: EOS only, every row runs about the full length)")
    p.add_argument("--rounds", type=int, default=7, help="timed rollouts per side, interleaved")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the workers")
    p.add_argument("--profile", action="store_true", help="also print where one rollout's time goes")
    p.add_argument("--compile", action="store_true",
                   help=f"add {COMPILED}: cache=static, compile=True (Inductor; a minute or more of compiling)")
    p.add_argument("--out", help="also write the results of all sizes as one JSON list to this path")
    add_results_arg(p)
    p.add_argument("--worker", nargs=4, metavar=("FOLDER", "PRESET", "KIND", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        folder, preset, kind, out = args.worker
        result = (speed_worker(Path(folder), preset, args) if kind == "speed"
                  else rss_worker(Path(folder), preset, kind, args))
        Path(out).write_text(json.dumps(result))
        return
    sizes = args.sizes.split(",")
    if any(s not in SIZES for s in sizes):
        sys.exit(f"--sizes: choose from {', '.join(SIZES)}")

    results = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-rollout-") as tmp:
        folder = Path(tmp)
        prepare(folder, args.batch)
        for size in sizes:
            speed = run_worker(folder, size, args)
            rss = {side: run_worker(folder, size, args, side) for side in all_sides(args)}
            results.append(report(size, speed, rss, args))
            write_result(args.results_dir / f"rollout-{size}.json", results[-1])
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark: tether's DPO training speed against TRL's DPOTrainer, measured in one run, ratio printed.

    .venv/bin/python benchmarks/bench_dpo.py [--size 5m|30m] [--steps 40] [--warmup 8] [--rounds 2] [--threads 1]
                                             [--pairs-per-prompt 2] [--trl-precompute] [--trl-sampler random]
                                             [--results-dir DIR]

1. Make sure the peer venv `.peer` exists (common.ensure_peer).
2. Build the shared inputs once in a temp folder: a BPE tokenizer trained on the tiny world's pretraining
   corpus, a freshly initialised Llama of `--size` (5m: tether's "small" preset, 4.6M parameters; 30m: 34M,
   common.SIZES) saved as a HF folder, and tiny-world preference pairs
   (`preference_pairs`) written twice: tether JSONL and TRL conversational JSONL.
3. Measure the fp32 matmul peak (2048x2048) for model FLOP utilisation (MFU).
4. Run tether's `dpo` stage (loss=sigmoid) in a subprocess and TRL's DPOTrainer in the peer venv
   (benchmarks/peer_dpo.py), `--rounds` times each, alternating the order (common.alternate): same model
   folder, same pairs, batch 16 pairs, max length 256, beta 0.1, fp32, no eval, no checkpoints.
   `--trl-precompute` adds a third side: TRL with precompute_ref_log_probs=True.
5. Steady-state pairs/s over the steps after `--warmup` (medians of per-step rates) of each side's fastest
   round, the one-off reference precompute in its own column, pairs/s with that precompute amortised over
   one epoch, peak RSS; print a table and the ratios, write benchmarks/results/dpo-<size>.json
   (dpo-trl-group_by_length-<size>.json with `--trl-sampler group_by_length`; --results-dir; before --size
   existed: dpo.json, 5m).

What each side computes per step differs, and that difference is the point of the comparison:
- tether scores the reference ONCE per dataset (one no-grad pass, cached in out/ref_logps.safetensors),
  then each step is one forward + backward of the policy over the 2M chosen+rejected rows.
- TRL by default keeps a second copy of the model and runs a no-grad reference forward on every step
  (precompute_ref_log_probs=False), so each step is about 4 forward-equivalents of work against tether's 3.
Absolute figures drift on a shared machine: compare only the ratios measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: E402
from common import (
    SIZES,
    THREADS_HELP,
    add_results_arg,
    alternate,
    busy_note,
    ensure_peer,
    hh_pairs,
    matmul_peak,
    rss_mb,
    timed_steps,
    world_model,
    write_result,
)

BATCH, MAX_LENGTH, BETA, LR, SEED = 16, 256, 0.1, 1e-4, 0
LABELS = {"tether": "tether", "trl": "TRL", "trl-precompute": "TRL pre"}


# ---------------------------------------------------------------------------------------------
# 2. Shared inputs


def preference_pairs(world, per_prompt: int, seed: int = SEED) -> list:
    """Labelled comparisons over the world's train prompts: chosen is the good content for the prompt's
    category; rejected alternates between the bad content (sycophancy, compliance, over-refusal, invention)
    and the chosen text decorated with flattery, hedging or padding (what the world's raters over-reward)."""
    from tether.data.preferences import Comparison
    from tether.world.styles import BAD_CONTENT, GOOD_CONTENT, content, decorate

    rng = random.Random(seed)
    out = []
    for q in world.train_queries():
        for k in range(per_prompt):
            chosen = content(q, GOOD_CONTENT[q.category], rng, world.knowledge)
            if k % 2 == 0:
                rejected = content(q, BAD_CONTENT[q.category], rng, world.knowledge)
            else:
                rejected = decorate(chosen, rng, flatter=True, hedge=rng.random() < 0.5, pad=rng.randint(0, 2))
            out.append(Comparison(q.text, chosen, rejected, choice="A", rater="bench"))
    return out


def prepare(folder: Path, per_prompt: int, size: str, data: str = "world", hh_n: int = 400):
    """Write prefs.jsonl (tether), trl.jsonl (TRL conversational) and model/ under `folder`; return the model.
    data="hh": HH-RLHF comparisons (`common.hh_pairs`) instead of the world's."""
    from tether.data.preferences import write_comparisons, write_trl
    from tether.world.world import World, WorldConfig

    model = world_model(folder / "model", SIZES[size], SEED)
    comparisons = (preference_pairs(World(WorldConfig()), per_prompt) if data == "world"
                   else hh_pairs(folder / "model", hh_n, MAX_LENGTH))
    write_comparisons(folder / "prefs.jsonl", comparisons)
    write_trl(folder / "trl.jsonl", comparisons, conversational=True)
    return model


# ---------------------------------------------------------------------------------------------
# 4. The tether side (this file re-run as a worker, so its RSS is its own)


def tether_worker(folder: Path, steps: int, out: Path, settings: list[str] = ()) -> None:
    """Run `tether.stages.dpo.run` with thin timers around the functions it calls by module name (the pair losses' in
    `tether.stages.dpo.pairs`).

    The wrappers only read the clock and their arguments: the reference pass (`reference_logps`, of which
    `reference_key` is the sha256 of weights and sequences), the start of the loop (`resume_training` returns
    just before it) and the end of every optimizer step (`train_step`).
    """
    os.environ["TETHER_QUIET"] = "1"  # no progress bar; TRL's tqdm is off too
    import torch

    from tether.config import load_config
    from tether.stages import dpo
    from tether.stages.dpo import pairs as dpo_pairs

    clock: dict = {"reference_s": 0.0, "reference_key_s": 0.0}
    records: list[dict] = []
    loaded: dict = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
            return out
        return wrapper

    original_step, original_resume, original_load = dpo_pairs.train_step, dpo.resume_training, dpo_pairs.load

    def train_step(model, optimizer, pairs, cfg, pad_id, lr, *rest):
        row = original_step(model, optimizer, pairs, cfg, pad_id, lr, *rest)
        seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        records.append({"time": time.perf_counter() - clock["start"], "cpu": time.process_time() - clock["cpu_start"],
                        "pairs": len(pairs), "tokens": row["tokens"],
                        "padded_tokens": len(seqs) * max(len(e.input_ids) for e in seqs),
                        "loss_tokens": sum(sum(e.loss_mask) for e in seqs)})
        return row

    def resume_training(*args, **kwargs):
        start = original_resume(*args, **kwargs)
        clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()
        return start

    def load_pairs(*args, **kwargs):
        loaded["result"] = original_load(*args, **kwargs)
        return loaded["result"]

    dpo_pairs.train_step, dpo.resume_training, dpo_pairs.load = train_step, resume_training, load_pairs
    dpo_pairs.reference_logps = timed("reference_s", dpo_pairs.reference_logps)
    dpo_pairs.reference_key = timed("reference_key_s", dpo_pairs.reference_key)

    overrides = [f"data={folder / 'prefs.jsonl'}", f"model={folder / 'model'}", f"out={folder / 'tether-run'}",
                 f"batch_size={BATCH}", f"micro_batch_size={BATCH}", f"max_steps={steps}", f"max_length={MAX_LENGTH}",
                 "loss=sigmoid", f"beta={BETA}", f"lr={LR}", "save_every=0", "eval_fraction=0", "log_every=10",
                 f"seed={SEED}", *settings]
    cfg = load_config(dpo.DPOConfig, None, overrides)
    dpo.run(cfg)
    rss = rss_mb()
    pairs, train, _, report = loaded["result"]
    assert report["truncated_pairs"] == 0, "pairs cut at max_length: the sides truncate differently"
    seqs = [e for p in train for e in (p.chosen, p.rejected)]
    data = {"pairs": len(train), "tokens": sum(len(e.input_ids) for e in seqs),
            "loss_tokens": sum(sum(e.loss_mask) for e in seqs)}
    steps_out = [{"step": i + 1, **r} for i, r in enumerate(records)]
    result = {"side": "tether", "steps": steps_out, "data": data, "precompute_s": clock["reference_s"],
              "precompute_key_s": clock["reference_key_s"], "precompute_pairs": len(pairs),
              "reference": "log-probs computed once per dataset (one no-grad pass, cached), no reference model kept",
              "optimizer": "torch AdamW fused", "sampler": f"length-bucketed (bucket_size={cfg.bucket_size})"
              + (", compiled layers" if cfg.torch_compile else ""),
              "threads": torch.get_num_threads(), "peak_rss_mb": rss}
    out.write_text(json.dumps(result))


def run_side(side: str, folder: Path, args) -> dict:
    """One timed run of `side` in its own process (a fresh run: tether must not find its reference cache)."""
    precompute = ["--precompute"] if side == "trl-precompute" else []
    return common.run_side(side, folder, args.threads, [__file__, "--steps", args.steps, "--tether-set",
                                                        *args.tether_set, "--tether-worker", folder],
                           "peer_dpo.py", ["--model", folder / "model", "--data", folder / "trl.jsonl", "--workdir",
                                           folder / "trl-run", "--steps", args.steps, "--batch-size", BATCH,
                                           "--max-length", MAX_LENGTH, "--beta", BETA, "--sampler",
                                           args.trl_sampler, *precompute, *(["--compile"] if args.trl_compile else [])])


# ---------------------------------------------------------------------------------------------
# 5. Summary


def summarise(result: dict, warmup: int, model, peak: float) -> dict:
    """Steady-state throughput over steps (warmup, last], the precompute, and pairs/s amortised over an epoch.

    Headline rates are medians of per-step rates (a burst from another process on the shared machine makes
    a step several times slower; a median ignores it, a wall-clock mean does not); the wall rate is kept
    beside them. Amortised: one epoch of E pairs costs precompute + E / pairs_per_s seconds.
    """
    from tether.models import model_flops_per_token

    timed, durations = timed_steps(result["steps"], warmup)
    pairs_per_s = statistics.median(s["pairs"] / d for s, d in zip(timed, durations))
    cpu = timed_steps(result["steps"], warmup, "cpu")[1] if "cpu" in result["steps"][0] else durations
    cpu_pairs_per_s = sum(s["pairs"] for s in timed) / sum(cpu)  # pairs per second of this process's CPU time
    tokens = sum(s["tokens"] for s in timed)
    epoch = result["data"]["pairs"]
    pre = result.get("precompute_s", 0.0)
    mean_len = tokens / sum(2 * s["pairs"] for s in timed)
    tokens_per_s = statistics.median(s["tokens"] / d for s, d in zip(timed, durations))
    padded_per_s = statistics.median(s["padded_tokens"] / d for s, d in zip(timed, durations))
    flops_per_token = model_flops_per_token(model, round(mean_len))  # policy training FLOPs only
    return {
        "side": result["side"], "timed_steps": len(timed), "step_seconds": durations,
        "pairs_per_s": pairs_per_s, "cpu_pairs_per_s": cpu_pairs_per_s, "wall_pairs_per_s": sum(s["pairs"] for s in timed) / sum(durations),
        "tokens_per_s": tokens_per_s, "padded_tokens_per_s": padded_per_s, "precompute_s": pre, "epoch_pairs": epoch,
        "amortised_pairs_per_s": epoch / (pre + epoch / pairs_per_s),
        "padding_fraction": 1 - tokens / sum(s["padded_tokens"] for s in timed), "mean_seq_len": mean_len,
        "mfu": tokens_per_s * flops_per_token / peak, "peak_rss_mb": result["peak_rss_mb"],
        "reference": result["reference"], "sampler": result["sampler"], "optimizer": result["optimizer"],
        "threads": result["threads"],
    }


def print_table(rows: list[dict], peak: float) -> None:
    print(f"\n{'side':<9}{'pairs/s':>9}{'cpu pairs/s':>13}{'wall pairs/s':>14}{'precompute s':>14}{'amortised pairs/s':>19}"
          f"{'tokens/s':>10}{'padded tok/s':>14}{'pad %':>7}{'peak RSS MB':>13}{'MFU':>8}")
    for r in rows:
        print(f"{LABELS[r['side']]:<9}{r['pairs_per_s']:>9.1f}{r['cpu_pairs_per_s']:>13.1f}{r['wall_pairs_per_s']:>14.1f}{r['precompute_s']:>14.2f}"
              f"{r['amortised_pairs_per_s']:>19.1f}{r['tokens_per_s']:>10.0f}{r['padded_tokens_per_s']:>14.0f}"
              f"{100 * r['padding_fraction']:>7.1f}{r['peak_rss_mb']:>13.0f}{100 * r['mfu']:>7.2f}%")
    print("(pairs/s, tokens/s, padded tok/s, MFU: medians of per-step rates after warm-up; amortised: one epoch of "
          f"{rows[0]['epoch_pairs']} pairs including the precompute; MFU counts policy forward+backward FLOPs only)")
    print(f"fp32 matmul peak (2048x2048): {peak / 1e9:.1f} GFLOP/s")


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    t = rows["tether"]
    out = {}
    for side in (s for s in rows if s != "tether"):
        p = rows[side]
        out[f"pairs_per_s_vs_{side}"] = t["pairs_per_s"] / p["pairs_per_s"]
        out[f"amortised_pairs_per_s_vs_{side}"] = t["amortised_pairs_per_s"] / p["amortised_pairs_per_s"]
        out[f"wall_pairs_per_s_vs_{side}"] = t["wall_pairs_per_s"] / p["wall_pairs_per_s"]
        out[f"cpu_pairs_per_s_vs_{side}"] = t["cpu_pairs_per_s"] / p["cpu_pairs_per_s"]
        out[f"padded_tokens_per_s_vs_{side}"] = t["padded_tokens_per_s"] / p["padded_tokens_per_s"]
    return out


def differences(raw: dict[str, dict], rows: dict[str, dict]) -> list[str]:
    """What is not the same on every side, in words."""
    data = {side: r["data"] for side, r in raw.items()}
    if len({json.dumps(d, sort_keys=True) for d in data.values()}) > 1:
        notes = [f"TOKENISED DATASETS DIFFER: {data}"]
    else:
        d = data["tether"]
        notes = [(f"same tokenised dataset on every side ({d['pairs']} pairs, {d['tokens']} tokens in the "
                  f"chosen+rejected sequences, {d['loss_tokens']} response tokens scored)")]
    for side, r in raw.items():
        notes.append(f"reference, {LABELS[side]}: {r['reference']}")
    t = raw["tether"]
    notes.append(f"tether's precompute ({t['precompute_s']:.2f}s for {t['precompute_pairs']} pairs) includes "
                 f"{t['precompute_key_s']:.2f}s of sha256 over the weights and sequences (the cache key)")
    notes.append("batch order: " + ", ".join(f"{LABELS[s]} {r['sampler']} (padding "
                                             f"{100 * r['padding_fraction']:.0f}%)" for s, r in rows.items()))
    notes.append("optimizer: " + ", ".join(f"{LABELS[s]} {r['optimizer']}" for s, r in raw.items()))
    notes.append("log-probs: tether the LM head at response positions only, in chunks, and each prompt run once "
                 "with chosen and rejected after it in one row under a custom mask (tether.logprobs; settings "
                 "response_only_head, share_prompts); TRL a chunked fused LM head over response positions only, "
                 "that also computes entropy, mean logits and top-1 for its logs, every sequence whole")
    notes.append("TRL's DPOConfig defaults to gradient_checkpointing=True and bf16=True; both are off here, "
                 "as in tether (fp32, no recompute); dropout is off on both sides")
    notes.append("learning-rate schedule and weight decay differ (no effect on speed)")
    return notes


def report(args, runs: dict[str, list[dict]], model, peak: float) -> None:
    """Print the table, ratios and differences of the fastest run per side; write the results JSON."""
    from tether.models import count_parameters

    summaries = {side: [summarise(r, args.warmup, model, peak) for r in rs] for side, rs in runs.items()}
    best = {side: max(range(args.rounds), key=lambda i: ss[i]["pairs_per_s"]) for side, ss in summaries.items()}
    rows = {side: summaries[side][best[side]] for side in runs}
    raw = {side: runs[side][best[side]] for side in runs}
    versions = raw["trl"]["versions"]
    print(f"\nDPO (sigmoid, beta {BETA}) on {args.data} pairs, {args.size} model ({count_parameters(model) / 1e6:.2f}M parameters), batch "
          f"{BATCH} pairs, max length {MAX_LENGTH}, {args.steps} steps, timed over the last "
          f"{args.steps - args.warmup}, best of {args.rounds} round(s) per side, torch threads "
          f"{rows['tether']['threads']}; TRL {versions['trl']}, transformers {versions['transformers']}")
    print_table(list(rows.values()), peak)
    r = ratios(rows)
    peers = [s for s in rows if s != "tether"]
    best_peer = max(peers, key=lambda s: rows[s]["pairs_per_s"])
    best_amortised = max(peers, key=lambda s: rows[s]["amortised_pairs_per_s"])
    r["headline_steady_vs_trl_best"] = r[f"pairs_per_s_vs_{best_peer}"]
    r["headline_amortised_vs_trl_best"] = r[f"amortised_pairs_per_s_vs_{best_amortised}"]
    best_cpu = max(peers, key=lambda s: rows[s]["cpu_pairs_per_s"])
    r["headline_cpu_vs_trl_best"] = r[f"cpu_pairs_per_s_vs_{best_cpu}"]
    print(f"HEADLINE tether / TRL at its best here: {r['headline_steady_vs_trl_best']:.2f}x steady (vs "
          f"{LABELS[best_peer]}), {r['headline_amortised_vs_trl_best']:.2f}x with precomputes amortised over one "
          f"epoch (vs {LABELS[best_amortised]}), {r['headline_cpu_vs_trl_best']:.2f}x per CPU-second of the timed "
          f"steps (vs {LABELS[best_cpu]}: one thread per side, so the time each side computed)")
    for side in peers:
        print(f"ratio tether/{LABELS[side]}: pairs/s {r[f'pairs_per_s_vs_{side}']:.2f}x steady, "
              f"{r[f'amortised_pairs_per_s_vs_{side}']:.2f}x with the precompute amortised over one epoch, "
              f"{r[f'wall_pairs_per_s_vs_{side}']:.2f}x wall, {r[f'cpu_pairs_per_s_vs_{side}']:.2f}x per CPU-second; padded tokens/s "
              f"{r[f'padded_tokens_per_s_vs_{side}']:.2f}x (padding-neutral)")
    notes = differences(raw, rows)
    busy = busy_note([run["load"] for rs in runs.values() for run in rs])
    if busy:
        notes.append(busy)
    for side, ss in summaries.items():
        print(f"{LABELS[side]} pairs/s per round: " + ", ".join(f"{x['pairs_per_s']:.1f}" for x in ss))
    print("\ndifferences:\n" + "\n".join(f"- {n}" for n in notes))
    name = ("dpo" if args.trl_sampler == "random" else f"dpo-trl-{args.trl_sampler}") + (
        "-hh" if args.data == "hh" else "") + ("-tether-compile" if "torch_compile=true" in args.tether_set else "") + (
        "-trl-compile" if args.trl_compile else "")
    write_result(args.results_dir / f"{name}-{args.size}.json", {
        "size": args.size, "data": args.data, "preset": SIZES[args.size], "trl_sampler": args.trl_sampler, "steps": args.steps,
        "warmup": args.warmup, "batch_pairs": BATCH, "max_length": MAX_LENGTH, "beta": BETA,
        "parameters": count_parameters(model), "peak_flops": peak, "sides": rows, "ratios": r, "rounds": summaries,
        "versions": versions, "differences": notes, "raw": runs})


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description="tether DPO vs TRL DPOTrainer throughput (CPU, fp32)")
    p.add_argument("--size", choices=list(SIZES), default="5m", help="model size")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per side")
    p.add_argument("--warmup", type=int, default=8, help="leading steps left out of the timing")
    p.add_argument("--pairs-per-prompt", type=int, default=2,
                   help="pairs per train prompt (600 prompts): 2 gives 1200 pairs, 75 steps per epoch")
    p.add_argument("--trl-precompute", action="store_true",
                   help="also run TRL with precompute_ref_log_probs=True (TRL's default is off)")
    p.add_argument("--trl-compile", action="store_true",
                   help="TRL with torch_compile=True (transformers documents it for training speed); tether's own: "
                        "--tether-set torch_compile=true")
    p.add_argument("--trl-sampler", choices=["random", "group_by_length"], default="random",
                   help="TRL's train_sampling_strategy (random is TRL's default; tether always buckets by length)")
    p.add_argument("--data", choices=["world", "hh"], default="world",
                   help="world: the tiny world's pairs (short prompts); hh: HH-RLHF comparisons (long multi-turn "
                        "prompts shared by chosen and rejected) that fit --max-length whole")
    p.add_argument("--hh-pairs", type=int, default=400, help="HH-RLHF comparisons used with --data hh")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per side, alternating the order; the fastest run of each side is reported")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--keep", action="store_true", help="keep the temp folder of inputs and runs")
    add_results_arg(p)
    p.add_argument("--tether-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="settings over tether's DPO config (e.g. share_prompts=false)")
    p.add_argument("--tether-worker", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tether_worker:
        return tether_worker(Path(args.tether_worker[0]), args.steps, Path(args.tether_worker[1]), args.tether_set)
    if not 0 <= args.warmup < args.steps or args.rounds < 1 or args.pairs_per_prompt < 1:
        sys.exit("need 0 <= --warmup < --steps, --rounds >= 1 and --pairs-per-prompt >= 1")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # for the matmul peak; the sides get OMP_NUM_THREADS
    ensure_peer()
    sides = ["tether", "trl"] + (["trl-precompute"] if args.trl_precompute else [])
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-dpo-"))
    try:
        print(f"inputs in {folder}", flush=True)
        model = prepare(folder, args.pairs_per_prompt, args.size, args.data, args.hh_pairs)
        peak = matmul_peak()
        runs = alternate(args.rounds, tuple(sides), lambda side: run_side(side, folder, args))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    peak = max(peak, matmul_peak())  # other processes only ever lower it: keep the best
    report(args, runs, model, peak)


if __name__ == "__main__":
    main()

"""Benchmark: tether's SFT training speed against TRL's SFTTrainer, measured in one run, ratio printed.

    .venv/bin/python benchmarks/bench_sft.py [--steps 50] [--warmup 10] [--size 5m|30m|demo] [--rounds 2]
                                             [--threads 1] [--trl-sampler random|group_by_length|padding_free]
                                             [--tether-padding-free [--tether-pack-tokens N]] [--data world|hh]
                                             [--results-dir DIR]

1. Make sure the peer venv `.peer` (torch CPU, trl, transformers, datasets, accelerate) exists.
2. Build the shared inputs once in a temp folder: the tiny world's SFT demos as JSONL (--data hh: the chosen
   dialogues of HH-RLHF that fit MAX_LENGTH whole, so neither side cuts them), a BPE tokenizer trained on the
   world's pretraining corpus, and a freshly initialised Llama saved as a HF folder.
3. Measure the fp32 matmul peak (2048x2048, best of a few) for model FLOP utilisation (MFU).
4. Run tether's SFT stage in a subprocess and TRL's SFTTrainer in the peer venv (benchmarks/peer_sft.py),
   `--rounds` times each, alternating which goes first, on the same model folder, tokenizer and
   conversations: batch 16, max length 256, loss on assistant tokens only, fp32, no eval, no checkpoints.
5. Throughput over the steps after `--warmup` (medians of per-step rates, see `summarise`, and tokens per second of
   each side's own CPU time) of each side's fastest round; print a table and the ratio, and write
   benchmarks/results/sft-<size>.json (--results-dir).

Tokens are non-pad tokens (prompt and response); "padded" counts the (B, T) tensor the model ran on (packed: the
(rows, width) tensor of `tether.packing`, with --tether-padding-free).
Absolute figures drift on a shared machine: compare only the ratio measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
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
    matmul_peak,
    rss_mb,
    timed_steps,
    world_model,
    write_result,
)

BATCH, MAX_LENGTH, SEED = 16, 256, 0
# --size -> tether preset: common.SIZES (5m, 30m; "bench-30m" is added to PRESETS in this process only) and demo.
SFT_SIZES = {"demo": "demo", **SIZES}


# ---------------------------------------------------------------------------------------------
# 2. Shared inputs (1. the peer venv and 3. the matmul peak are in common.py)


def hh_conversations(folder: Path, n: int) -> list:
    """The first `n` chosen HH-RLHF dialogues (common.HH_DATA: multi-turn, long) that fit MAX_LENGTH whole under the
    benchmark tokenizer: tether would cut longer ones and TRL's padding-free run takes no max_length."""
    from tether.chat import chat_format
    from tether.data.formats import load_conversations
    from tether.models import load_tokenizer

    fmt = chat_format(load_tokenizer(str(folder / "model")))
    conversations = load_conversations(common.HH_DATA, "hh")
    encoded = fmt.encode_many([(c, None) for c in conversations], MAX_LENGTH)
    return [c for c, e in zip(conversations, encoded) if not e.truncated][:n]


def prepare(folder: Path, size: str, data: str = "world", hh_n: int = 1000):
    """Write sft.jsonl and model/ (weights + tokenizer) under `folder`; return the built model."""
    from tether.data.sft_data import write_conversations
    from tether.world.world import World, WorldConfig

    model = world_model(folder / "model", SFT_SIZES[size], SEED)
    conversations = World(WorldConfig()).sft_demos() if data == "world" else hh_conversations(folder, hh_n)
    write_conversations(folder / "sft.jsonl", conversations)
    return model


# ---------------------------------------------------------------------------------------------
# 4. The tether side (this file re-run as a worker, so its RSS is its own)


def tether_worker(folder: Path, steps: int, out: Path, pack: int | None, compiled: bool = False) -> None:
    """Run `tether.stages.sft.run` with a thin timer around `train_step` (this process's CPU time at each step's
    end, as the peer's StepClock), then rebuild each step's batch to count padded and loss tokens. `pack`: None
    padded batches, else padding_free with pack_tokens=pack; `compiled`: torch_compile=true."""
    os.environ["TETHER_QUIET"] = "1"  # no progress bar; TRL's tqdm is off too
    import torch

    from tether.stages import lm

    from tether.chat import chat_format
    from tether.config import load_config
    from tether.data.sft_data import read_conversations
    from tether.models import load_tokenizer
    from tether.packing import pack_rows
    from tether.stages import sft
    from tether.stages.lm import split_eval
    from tether.training import epoch_batches

    overrides = [f"data={folder / 'sft.jsonl'}", f"model={folder / 'model'}", f"out={folder / 'tether-run'}",
                 f"batch_size={BATCH}", f"micro_batch_size={BATCH}", f"max_steps={steps}", f"max_length={MAX_LENGTH}",
                 "save_every=0", "eval_fraction=0", "log_every=1", f"seed={SEED}",
                 *([] if pack is None else ["padding_free=true", f"pack_tokens={pack}"]),
                 *(["torch_compile=true"] if compiled else [])]
    cfg = load_config(sft.SFTConfig, None, overrides)
    cpu: list[float] = []
    original_step, original_resume = lm.train_step, lm.resume_training

    def train_step(*args, **kwargs):
        row = original_step(*args, **kwargs)
        cpu.append(time.process_time() - cpu[0])
        return row

    def resume_training(*args, **kwargs):
        start = original_resume(*args, **kwargs)
        cpu.append(time.process_time())  # cpu[0]: the clock at the start of the loop; cpu[i]: at step i's end
        return start

    lm.train_step, lm.resume_training = train_step, resume_training
    sft.run(cfg)
    rss = rss_mb()
    rows = [json.loads(ln) for ln in (folder / "tether-run" / "metrics.jsonl").read_text().splitlines() if ln]
    # The batches are a pure function of (seed, epoch) in tether: rebuild them with its own functions.
    tokenizer = load_tokenizer(cfg.model)
    examples, report = sft.encode_conversations(chat_format(tokenizer, cfg.chat_template, cfg.model),
                                                read_conversations(cfg.data), cfg.max_length)
    train, _ = split_eval(examples, cfg.eval_fraction, cfg.seed)
    per_epoch = len(train) // cfg.batch_size
    lengths = [len(e.input_ids) for e in train]
    seen, records, epochs = 0, [], {}
    for row in rows:
        s = row["step"] - 1
        if s // per_epoch not in epochs:
            epochs[s // per_epoch] = epoch_batches(lengths, cfg.batch_size, cfg.bucket_size, cfg.seed, s // per_epoch)
        batch = [train[i] for i in epochs[s // per_epoch][s % per_epoch]]
        tokens = sum(len(e.input_ids) for e in batch)
        assert tokens == row["tokens"], "rebuilt batch differs from the one tether trained on"
        seen += tokens
        padded = len(batch) * max(len(e.input_ids) for e in batch)
        if pack is not None:  # micro_batch_size = batch_size: one micro-batch, packed into rows
            rows = pack_rows([len(e.input_ids) for e in batch], pack)
            padded = len(rows) * max(sum(len(batch[i].input_ids) for i in r) for r in rows)
        records.append({"step": row["step"], "time": seen / row["tokens_per_s"], "cpu": cpu[row["step"]],
                        "sequences": len(batch),
                        "tokens": tokens, "padded_tokens": padded,
                        "loss_tokens": sum(sum(e.loss_mask[1:]) for e in batch)})
    data = {"sequences": report["conversations"], "tokens": sum(len(e.input_ids) for e in examples),
            "loss_tokens": report["assistant_tokens"]}
    result = {"side": "tether", "steps": records, "data": data, "optimizer": "torch AdamW fused",
              "sampler": f"length-bucketed (bucket_size={cfg.bucket_size})" + (
                  "" if pack is None else f", padding-free ({'one row' if pack == 0 else f'rows of {pack} tokens'})")
              + (", compiled layers" if compiled else ""),
              "threads": torch.get_num_threads(), "peak_rss_mb": rss}
    out.write_text(json.dumps(result))


def run_side(side: str, folder: Path, args) -> dict:
    """One timed run of `side` in its own process."""
    packing = ["--tether-padding-free", "--tether-pack-tokens", args.tether_pack_tokens] if args.tether_padding_free \
        else []
    packing += ["--tether-compile"] if args.tether_compile else []
    return common.run_side(side, folder, args.threads,
                           [__file__, "--steps", args.steps, *packing, "--tether-worker", folder],
                           "peer_sft.py", ["--model", folder / "model", "--data", folder / "sft.jsonl", "--workdir",
                                           folder / "trl-run", "--steps", args.steps, "--batch-size", BATCH,
                                           "--max-length", MAX_LENGTH, "--sampler",
                                           "random" if args.trl_sampler == "padding_free" else args.trl_sampler,
                                           *(["--padding-free"] if args.trl_sampler == "padding_free" else []),
                                           *(["--compile"] if args.trl_compile else [])])


# ---------------------------------------------------------------------------------------------
# 5. Summary


def summarise(result: dict, warmup: int, model, peak: float, cpu_peak: float) -> dict:
    """Throughput over steps (warmup, last], and MFU.

    The headline rates are medians of per-step rates: on a shared 2-core machine another process's burst
    makes a step up to 10x slower (its threads and ours fight over the cores), and a median ignores those
    steps where a wall-clock mean does not. The wall-clock rate is kept beside it, and the rate per second of
    the side's own CPU time (one thread per side: the time it computed, which other jobs stretch far less than
    wall time), with its MFU against the matmul peak timed on CPU time (`cpu_peak`).
    """
    from tether.models import model_flops_per_token

    timed, durations = timed_steps(result["steps"], warmup)
    cpu = timed_steps(result["steps"], warmup, "cpu")[1]
    seconds = sum(durations)
    tokens = sum(s["tokens"] for s in timed)
    padded = sum(s["padded_tokens"] for s in timed)
    mean_len = tokens / sum(s["sequences"] for s in timed)
    tokens_per_s = statistics.median(s["tokens"] / d for s, d in zip(timed, durations))
    flops_per_token = model_flops_per_token(model, round(mean_len))
    return {
        "side": result["side"], "timed_steps": len(timed), "seconds": seconds, "step_seconds": durations,
        "tokens_per_s": tokens_per_s, "steps_per_s": 1 / statistics.median(durations),
        "padded_tokens_per_s": statistics.median(s["padded_tokens"] / d for s, d in zip(timed, durations)),
        "wall_tokens_per_s": tokens / seconds, "padding_fraction": 1 - tokens / padded,
        "cpu_tokens_per_s": tokens / sum(cpu), "cpu_mfu": tokens / sum(cpu) * flops_per_token / cpu_peak,
        "loss_tokens_per_step": sum(s["loss_tokens"] for s in timed) / len(timed),
        "mean_seq_len": mean_len, "flops_per_token": flops_per_token,
        "mfu": tokens_per_s * flops_per_token / peak, "peak_rss_mb": result["peak_rss_mb"],
        "sampler": result["sampler"], "optimizer": result["optimizer"], "threads": result["threads"],
    }


def print_table(rows: list[dict], peak: float, cpu_peak: float) -> None:
    print(f"\n{'side':<8}{'tokens/s':>10}{'wall tok/s':>12}{'steps/s':>9}{'padded tok/s':>14}{'pad %':>7}"
          f"{'mean len':>10}{'peak RSS MB':>13}{'MFU':>8}{'cpu tok/s':>11}{'cpu MFU':>9}")
    for r in rows:
        print(f"{r['side']:<8}{r['tokens_per_s']:>10.0f}{r['wall_tokens_per_s']:>12.0f}{r['steps_per_s']:>9.2f}"
              f"{r['padded_tokens_per_s']:>14.0f}{100 * r['padding_fraction']:>7.1f}{r['mean_seq_len']:>10.1f}"
              f"{r['peak_rss_mb']:>13.0f}{100 * r['mfu']:>7.2f}%{r['cpu_tokens_per_s']:>11.0f}"
              f"{100 * r['cpu_mfu']:>8.1f}%")
    t, p = rows
    print(f"\nratio tether/TRL: tokens/s {t['tokens_per_s'] / p['tokens_per_s']:.2f}x, "
          f"steps/s {t['steps_per_s'] / p['steps_per_s']:.2f}x, "
          f"padded tokens/s {t['padded_tokens_per_s'] / p['padded_tokens_per_s']:.2f}x, "
          f"wall tokens/s {t['wall_tokens_per_s'] / p['wall_tokens_per_s']:.2f}x")
    print("(tokens/s, steps/s, padded tok/s, MFU: medians of per-step rates; wall tok/s: total tokens / total time)")
    print(f"fp32 matmul peak (2048x2048): {peak / 1e9:.1f} GFLOP/s wall, {cpu_peak / 1e9:.1f} GFLOP/s per CPU-second")


def differences(tether: dict, trl: dict, s_tether: dict, s_trl: dict) -> list[str]:
    """What is not the same on both sides, in words."""
    if tether["data"] != trl["data"]:
        notes = [f"TOKENISED DATASETS DIFFER: tether {tether['data']} vs TRL {trl['data']}"]
    else:
        d = tether["data"]
        notes = [f"same tokenised dataset on both sides ({d['sequences']} conversations, {d['tokens']} tokens, "
                 f"{d['loss_tokens']} assistant loss tokens)"]
    notes.append(f"batch order: tether {tether['sampler']}, TRL {trl['sampler']} sampler: padding "
                 f"{100 * s_tether['padding_fraction']:.0f}% vs {100 * s_trl['padding_fraction']:.0f}% "
                 "(tokens/s counts non-pad tokens only)")
    notes.append(f"optimizer: tether {tether['optimizer']}, TRL {trl['optimizer']}")
    notes.append("loss: tether the LM head at trained positions only, in chunks (response_only_head); TRL a chunked "
                 "fused LM head that also computes entropy and top-1 accuracy for its logs")
    notes.append("TRL's SFTConfig defaults to gradient_checkpointing=True and bf16=True; both are off here, "
                 "as in tether (fp32, no recompute)")
    notes.append("learning-rate schedule and weight decay differ (no effect on speed)")
    notes.append("different data order, so the timed steps hold different sequences "
                 f"(mean length {s_tether['mean_seq_len']:.1f} vs {s_trl['mean_seq_len']:.1f})")
    return notes


def report(args, runs: dict[str, list[dict]], model, peak: float, cpu_peak: float) -> None:
    """Print the table, ratio and differences of the fastest run per side; write the results JSON."""
    from tether.models import count_parameters

    summaries = {side: [summarise(r, args.warmup, model, peak, cpu_peak) for r in rs] for side, rs in runs.items()}
    best = {side: max(range(args.rounds), key=lambda i: ss[i]["tokens_per_s"]) for side, ss in summaries.items()}
    tether, trl = runs["tether"][best["tether"]], runs["trl"][best["trl"]]
    rows = [summaries["tether"][best["tether"]], summaries["trl"][best["trl"]]]
    best_cpu = {side: max(x["cpu_tokens_per_s"] for x in ss) for side, ss in summaries.items()}
    data = "HH-RLHF" if args.data == "hh" else "the world"
    print(f"\nSFT on {data}'s conversations, {args.size} model ({count_parameters(model) / 1e6:.2f}M parameters), "
          f"batch {BATCH}, "
          f"max length {MAX_LENGTH}, {args.steps} steps, timed over the last {args.steps - args.warmup}, "
          f"best of {args.rounds} round(s) per side, torch threads {rows[0]['threads']} (tether) / "
          f"{rows[1]['threads']} (TRL); TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}")
    print_table(rows, peak, cpu_peak)
    print(f"ratio tether/TRL per CPU-second (each side's best round): {best_cpu['tether'] / best_cpu['trl']:.2f}x "
          f"({best_cpu['tether']:.0f} vs {best_cpu['trl']:.0f} tokens per CPU-second)")
    notes = differences(tether, trl, *rows)
    busy = busy_note([r["load"] for rs in runs.values() for r in rs])
    if busy:
        notes.append(busy)
    for side, ss in summaries.items():
        print(f"{side} tokens/s per round: " + ", ".join(f"{x['tokens_per_s']:.0f}" for x in ss)
              + "; per CPU-second: " + ", ".join(f"{x['cpu_tokens_per_s']:.0f}" for x in ss))
    print("\ndifferences:\n" + "\n".join(f"- {n}" for n in notes))
    name = "sft" if args.trl_sampler == "random" else f"sft-trl-{args.trl_sampler}"
    name += ("-tether-padding-free" + (f"{args.tether_pack_tokens}" if args.tether_pack_tokens else "")
             if args.tether_padding_free else "") + ("-hh" if args.data == "hh" else "")
    name += ("-tether-compile" if args.tether_compile else "") + ("-trl-compile" if args.trl_compile else "")
    write_result(args.results_dir / f"{name}-{args.size}.json", {
        "size": args.size, "steps": args.steps, "warmup": args.warmup, "batch_size": BATCH, "max_length": MAX_LENGTH,
        "parameters": count_parameters(model), "peak_flops": peak, "tether": rows[0], "trl": rows[1],
        "rounds": summaries, "ratio_tokens_per_s": rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"],
        "ratio_cpu_tokens_per_s": best_cpu["tether"] / best_cpu["trl"], "cpu_peak_flops": cpu_peak,
        "versions": trl["versions"], "differences": notes, "raw": runs})


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description="tether SFT vs TRL SFTTrainer throughput (CPU, fp32)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per side")
    p.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    p.add_argument("--size", choices=list(SFT_SIZES), default="5m", help="model size")
    p.add_argument("--trl-sampler", choices=["random", "group_by_length", "padding_free"], default="random",
                   help="TRL's train_sampling_strategy (random is TRL's default; tether always buckets by length); "
                        "padding_free: random order with padding_free=True (no padding at all)")
    p.add_argument("--tether-padding-free", action="store_true",
                   help="tether packs each batch without padding (padding_free=true; tether.packing)")
    p.add_argument("--tether-pack-tokens", type=int, default=0,
                   help="with --tether-padding-free, tether's pack_tokens (0: one row per batch, as TRL)")
    p.add_argument("--tether-compile", action="store_true", help="tether with torch_compile=true (its layers compiled)")
    p.add_argument("--trl-compile", action="store_true",
                   help="TRL with torch_compile=True (transformers documents it for training speed)")
    p.add_argument("--data", choices=["world", "hh"], default="world",
                   help="world: the tiny world's SFT demos (short); hh: chosen HH-RLHF dialogues that fit whole")
    p.add_argument("--hh-rows", type=int, default=1000, help="HH-RLHF conversations used with --data hh")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per side, alternating which goes first; the fastest run of each side is reported")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP + " (also for the matmul peak)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder of inputs and runs")
    add_results_arg(p)
    p.add_argument("--tether-worker", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tether_worker:
        return tether_worker(Path(args.tether_worker[0]), args.steps, Path(args.tether_worker[1]),
                             args.tether_pack_tokens if args.tether_padding_free else None, args.tether_compile)
    if not 0 <= args.warmup < args.steps or args.rounds < 1:
        sys.exit("need 0 <= --warmup < --steps and --rounds >= 1")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # for the matmul peak; the sides get OMP_NUM_THREADS
    ensure_peer()
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-sft-"))
    try:
        print(f"inputs in {folder}", flush=True)
        model = prepare(folder, args.size, args.data, args.hh_rows)
        peak, cpu_peak = matmul_peak(), matmul_peak(clock=time.process_time)
        runs = alternate(args.rounds, ("tether", "trl"), lambda side: run_side(side, folder, args))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    peak = max(peak, matmul_peak())  # other processes only ever lower it: keep the best
    cpu_peak = max(cpu_peak, matmul_peak(clock=time.process_time))
    report(args, runs, model, peak, cpu_peak)


if __name__ == "__main__":
    main()

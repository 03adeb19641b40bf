"""Benchmark: tether's reward-model training speed against TRL's RewardTrainer, in one run, ratio printed.

    .venv/bin/python benchmarks/bench_rm.py [--data rated|unique|hh] [--size 5m|30m] [--steps 40] [--warmup 10]
                                            [--rounds 2] [--threads 1] [--profile 0] [--results-dir DIR]

1. Make sure the peer venv `.peer` (torch CPU, trl, transformers, datasets, accelerate) exists.
2. Build the shared inputs once in a temp folder: a BPE tokenizer trained on the tiny world's pretraining
   corpus, a fresh Llama of `--size` (5m: tether's "small" preset, 4.6M parameters; 30m: 34M, common.SIZES)
   saved as a HF folder, and comparisons on
   the world's train prompts: per prompt a good-content and a bad-content response (`styles.content`),
   each decorated (flattery, hedging, padding) at the world's pretraining rate, in random order.
   `--data rated` (default): each pair labelled by 3 simulated raters (`raters.label`, one row per
   rating, what `tether label` writes); ties are dropped, since TRL cannot train on them. `--data unique`:
   one row per pair, chosen = the good content. `--data hh`: the first `--hh-pairs` HH-RLHF comparisons
   (../shared/data/hh-rlhf) whose chosen and rejected fit 256 tokens whole, one row per pair: long multi-turn
   prompts, where running each prompt once matters most. Written as tether JSONL and as TRL conversational JSONL
   (`write_trl`), so that TRL tokenises with the same chat template: both sides train on the same ids.
3. Measure the fp32 matmul peak (2048x2048, best of a few, before and after the runs) for model FLOP
   utilisation (MFU). Run tether's rm stage in a subprocess (this file as a worker; each step timed by wrapping
   `tether.stages.rm.train_step`) and TRL's RewardTrainer in the peer venv (benchmarks/peer_rm.py),
   `--rounds` times each, alternating which goes first: same model folder, 16 pairs per step (tether
   rounds up to whole prompt groups), max length 256, fp32, lr 1e-4, no eval, no checkpoints.
4. Throughput over the steps after `--warmup` (medians of per-step rates, as in bench_sft.py) of each
   side's fastest round, MFU (each side's non-pad tokens x training FLOPs per token of the reward model: the
   Llama body without its LM head, see `rm_flops_per_token`) and peak RSS; print a table and the ratio; write
   benchmarks/results/rm-<data>-<size>.json (--results-dir; before --size existed: rm-<data>.json, 5m).
   `--profile N` then profiles N of tether's steps with torch.profiler and prints where the time goes.

Both models are the same class: tether's RewardModel runs LlamaForSequenceClassification (its bias-free `score`
head at every position, the last non-pad one kept), as TRL does. Work differs by design: TRL runs the chosen and the
rejected sequence of every pair (2B rows, chosen and rejected concatenated); tether runs each distinct
(prompt, response) of a step once, so with 3 ratings of one pair it runs 2 sequences for 3 pairs, and the prompt
tokens a prompt group's sequences share once (`share_prefixes`, then each sequence's tail after them).
"sequences/s" counts the rows each side's model ran; "pair tokens/s" counts both sequences of every
pair (the work of a side that does not deduplicate). Compare only ratios measured in one run.
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
    sh,
    side_env,
    timed_steps,
    world_model,
    write_result,
)

BATCH, MAX_LENGTH, LR, SEED = 16, 256, 1e-4, 0
DECORATION_RATE = 0.3  # as WorldConfig.decoration_rate


# ---------------------------------------------------------------------------------------------
# 2. Shared inputs


def world_comparisons(kind: str, seed: int = SEED) -> tuple[list, dict]:
    """Good-vs-bad comparisons on the world's train prompts (see the module docstring), and counts."""
    from tether.data.preferences import Comparison, pair_id
    from tether.world.raters import RaterPoolConfig, label
    from tether.world.styles import BAD_CONTENT, GOOD_CONTENT, content, decorate
    from tether.world.world import World, WorldConfig

    world = World(WorldConfig())
    rng = random.Random(seed)

    def respond(q, kind_of_content: str) -> str:
        text = content(q, kind_of_content, rng, world.knowledge)
        p = DECORATION_RATE
        return decorate(text, rng, flatter=rng.random() < p, hedge=rng.random() < p,
                        pad=rng.randint(1, 3) if rng.random() < p else 0)

    queue, goods = [], set()
    for q in world.train_queries():
        good, bad = respond(q, GOOD_CONTENT[q.category]), respond(q, BAD_CONTENT[q.category])
        if good.strip() == bad.strip():
            continue
        goods.add(good)
        a, b, choice = (good, bad, "A") if rng.random() < 0.5 else (bad, good, "B")
        queue.append(Comparison(q.text, a, b, choice=choice if kind == "unique" else None, id=pair_id(q.text, a, b)))
    if kind == "unique":
        return queue, {"pairs": len(queue), "rows": len(queue)}
    ratings = label(queue, world.knowledge, RaterPoolConfig())
    kept = [r for r in ratings if r.choice != "tie"]
    return kept, {"pairs": len(queue), "ratings": len(ratings), "ties_dropped": len(ratings) - len(kept),
                  "rows": len(kept), "good_chosen": sum(r.chosen in goods for r in kept) / len(kept)}


def prepare(folder: Path, kind: str, size: str, hh_n: int = 400) -> tuple[object, dict]:
    """Write model/, rm.jsonl (tether) and trl.jsonl (TRL conversational) under `folder`. kind="hh": the first
    `hh_n` HH-RLHF comparisons that fit MAX_LENGTH whole (`common.hh_pairs`: long prompts, one row per pair)."""
    from tether.data.preferences import write_comparisons, write_trl

    model = world_model(folder / "model", SIZES[size], SEED)
    if kind == "hh":
        comparisons = hh_pairs(folder / "model", hh_n, MAX_LENGTH)
        counts = {"pairs": len(comparisons), "rows": len(comparisons)}
    else:
        comparisons, counts = world_comparisons(kind)
    write_comparisons(folder / "rm.jsonl", comparisons)
    write_trl(folder / "trl.jsonl", comparisons, conversational=True)
    return model, counts


# ---------------------------------------------------------------------------------------------
# 3. The tether side (this file re-run as a worker, so its RSS is its own)


def tether_overrides(folder: Path, steps: int, compiled: bool = False) -> list[str]:
    return [f"data={folder / 'rm.jsonl'}", f"model={folder / 'model'}", f"out={folder / 'tether-run'}",
            f"batch_size={BATCH}", f"micro_batch_size={BATCH}", f"max_steps={steps}", f"max_length={MAX_LENGTH}",
            f"lr={LR}", "eval_fraction=0", "save_every=0", "log_every=1", f"seed={SEED}",
            *(["torch_compile=true"] if compiled else [])]


def padded_tokens(batch) -> int:
    """Token slots of the padded tensors an `rm_batch.PairBatch` runs: its length chunks, each padded to its own
    longest sequence, and its shared prefixes."""
    return sum(ids.numel() for ids, _ in batch.chunks + batch.prefixes)


def run_tokens(batch) -> int:
    """Tokens the model runs for an `rm_batch.PairBatch`: every tail (or whole sequence) and each shared prefix once."""
    return int(sum(mask.sum() for _, mask in batch.chunks + batch.prefixes))


def tether_worker(folder: Path, steps: int, out: Path, compiled: bool = False) -> None:
    """Run `tether.stages.rm.run` with its train_step wrapped to note each step's end time and pairs (`compiled`:
    torch_compile=true)."""
    os.environ["TETHER_QUIET"] = "1"  # no progress bar; TRL's tqdm is off too
    import torch

    from tether.config import load_config
    from tether.data.preferences import read_comparisons
    from tether.stages import rm

    start, ends, batches = [], [], []
    train_step = rm.train_step

    def timed_train_step(model, optimizer, pairs, cfg, lr, *rest):
        if not start:
            start.append(time.perf_counter())  # as TRL's on_train_begin: just before the first step
        row = train_step(model, optimizer, pairs, cfg, lr, *rest)
        ends.append(time.perf_counter())
        batches.append(pairs)  # counted after the run, outside the timing
        return row

    rm.train_step = timed_train_step  # `run` looks train_step up in its module at each call
    cfg = load_config(rm.RMConfig, None, tether_overrides(folder, steps, compiled))
    rm.run(cfg)
    rss = rss_mb()

    records = []
    for i, (end, pairs) in enumerate(zip(ends, batches)):
        distinct = {tuple(ids) for p in pairs for ids in (p.ids_a, p.ids_b)}
        micro = [rm.collate_pairs(m, 0, share_prefixes=cfg.share_prefixes)  # as the step ran (a causal Llama)
                 for m in rm.micro_batches(pairs, cfg.micro_batch_size)]
        records.append({"step": i + 1, "time": end - start[0], "pairs": len(pairs), "sequences": len(distinct),
                        "tokens": sum(map(len, distinct)), "run_tokens": sum(map(run_tokens, micro)),
                        "padded_tokens": sum(map(padded_tokens, micro)),
                        "pair_tokens": sum(len(p.ids_a) + len(p.ids_b) for p in pairs)})
    from tether.models import load_tokenizer

    pairs, _ = rm.encode_comparisons(load_tokenizer(cfg.model), read_comparisons(cfg.data), cfg)
    data = {"pairs": len(pairs), "pair_tokens": sum(len(p.ids_a) + len(p.ids_b) for p in pairs), "filtered_out": 0}
    result = {"side": "tether", "steps": records, "data": data, "optimizer": "torch AdamW fused",
              "sampler": "shuffled prompt groups (whole groups per step)" + (", compiled layers" if compiled else ""),
              "model_class": "RewardModel(LlamaForSequenceClassification)",
              "threads": torch.get_num_threads(), "peak_rss_mb": rss}
    out.write_text(json.dumps(result))


def run_side(side: str, folder: Path, args) -> dict:
    """One timed run of `side` in its own process."""
    compiled = ["--tether-compile"] if args.tether_compile else []
    return common.run_side(side, folder, args.threads,
                           [__file__, "--steps", args.steps, *compiled, "--tether-worker", folder],
                           "peer_rm.py", ["--model", folder / "model", "--data", folder / "trl.jsonl", "--workdir",
                                          folder / "trl-run", "--steps", args.steps, "--batch-size", BATCH,
                                          "--max-length", MAX_LENGTH, "--lr", LR, "--sampler", args.trl_sampler,
                                          *(["--compile"] if args.trl_compile else [])])


# ---------------------------------------------------------------------------------------------
# 4. Summary, and the profile


def rm_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of a reward model over `model`'s Llama body: `model_flops_per_token` (PaLM's
    6N + 12LHT) less the LM head's 6 x vocab x hidden, which a reward model replaces by a hidden -> 1 head."""
    from tether.models import model_flops_per_token

    return model_flops_per_token(model, seq_len) - 6 * model.get_output_embeddings().weight.numel()


def summarise(result: dict, warmup: int, model, peak: float) -> dict:
    """Rates over steps (warmup, last]: medians of per-step rates (see bench_sft.summarise), wall rates, and MFU.

    MFU counts the tokens each side's model ran (tether each distinct sequence of a step once, a shared prompt
    prefix once, then the tails; TRL both sequences of every pair), so it measures how well each side uses the
    FLOPs it spends, not how many it avoids.
    """
    timed, durations = timed_steps(result["steps"], warmup)
    seconds = sum(durations)
    mean_len = sum(s["tokens"] for s in timed) / sum(s["sequences"] for s in timed)
    flops_per_token = rm_flops_per_token(model, round(mean_len))

    def median_rate(key: str) -> float:
        return statistics.median(s[key] / d for s, d in zip(timed, durations))

    pair_tokens = [s.get("pair_tokens", s["tokens"]) for s in timed]  # TRL runs every pair's two sequences
    ran = [s.get("run_tokens", s["tokens"]) for s in timed]  # tether runs a shared prompt prefix once
    return {
        "side": result["side"], "timed_steps": len(timed), "seconds": seconds, "step_seconds": durations,
        "pairs_per_s": median_rate("pairs"), "wall_pairs_per_s": sum(s["pairs"] for s in timed) / seconds,
        "sequences_per_s": median_rate("sequences"), "tokens_per_s": median_rate("tokens"),
        "padded_tokens_per_s": median_rate("padded_tokens"),
        "pair_tokens_per_s": statistics.median(t / d for t, d in zip(pair_tokens, durations)),
        "pairs_per_step": sum(s["pairs"] for s in timed) / len(timed),
        "sequences_per_pair": sum(s["sequences"] for s in timed) / sum(s["pairs"] for s in timed),
        "run_tokens_per_s": statistics.median(t / d for t, d in zip(ran, durations)),
        "padding_fraction": 1 - sum(ran) / sum(s["padded_tokens"] for s in timed),
        "mean_seq_len": mean_len, "flops_per_token": flops_per_token,
        "mfu": statistics.median(t / d for t, d in zip(ran, durations)) * flops_per_token / peak,
        "peak_rss_mb": result["peak_rss_mb"], "threads": result["threads"], "optimizer": result["optimizer"],
    }


def print_table(rows: list[dict], peak: float) -> None:
    print(f"\n{'side':<8}{'pairs/s':>9}{'wall pairs/s':>14}{'seq/s':>8}{'tokens/s':>10}{'pair tok/s':>12}"
          f"{'pairs/step':>12}{'seq/pair':>10}{'pad %':>7}{'peak RSS MB':>13}{'MFU':>8}")
    for r in rows:
        print(f"{r['side']:<8}{r['pairs_per_s']:>9.1f}{r['wall_pairs_per_s']:>14.1f}{r['sequences_per_s']:>8.1f}"
              f"{r['tokens_per_s']:>10.0f}{r['pair_tokens_per_s']:>12.0f}{r['pairs_per_step']:>12.1f}"
              f"{r['sequences_per_pair']:>10.2f}{100 * r['padding_fraction']:>7.1f}{r['peak_rss_mb']:>13.0f}"
              f"{100 * r['mfu']:>7.2f}%")
    t, p = rows
    print(f"\nratio tether/TRL: pairs/s {t['pairs_per_s'] / p['pairs_per_s']:.2f}x (target >= 2x), "
          f"wall pairs/s {t['wall_pairs_per_s'] / p['wall_pairs_per_s']:.2f}x, "
          f"sequences/s {t['sequences_per_s'] / p['sequences_per_s']:.2f}x, "
          f"tokens/s {t['tokens_per_s'] / p['tokens_per_s']:.2f}x; peak RSS {t['peak_rss_mb'] / p['peak_rss_mb']:.2f}x")
    print("(pairs/s, seq/s, tokens/s, pair tok/s, MFU: medians of per-step rates; wall pairs/s: total pairs / total "
          "time; MFU: tokens/s x reward-model training FLOPs per token / matmul peak)")
    print(f"fp32 matmul peak (2048x2048): {peak / 1e9:.1f} GFLOP/s")


def differences(tether: dict, trl: dict, counts: dict) -> list[str]:
    """What is not the same on both sides, in words."""
    if tether["data"]["pairs"] != trl["data"]["pairs"] or tether["data"]["pair_tokens"] != trl["data"]["pair_tokens"]:
        notes = [f"TOKENISED DATASETS DIFFER: tether {tether['data']} vs TRL {trl['data']}"]
    else:
        notes = [f"same tokenised dataset on both sides ({tether['data']['pairs']} pairs, "
                 f"{tether['data']['pair_tokens']} tokens over both sequences of every pair; data: {counts})"]
    notes.append(f"model: tether RewardModel over LlamaForSequenceClassification; TRL {trl['model_class']}; "
                 f"TRL: score head on every position, last non-pad kept; tether: the same where sequences run whole, "
                 f"the score head at each sequence's last non-pad token only where prompts are shared in rows")
    notes.append("work: TRL runs both sequences of every pair (chosen and rejected concatenated, 2B rows); tether "
                 "runs each distinct sequence of a step once (repeated ratings of a pair share their two rows), and "
                 "the prompt tokens a prompt group's sequences start with once, then each sequence's tail (the "
                 "prefix and its tails in one row under a custom mask, tether.prefix_tree)")
    notes.append(f"batch: TRL {BATCH} pairs per step; tether {BATCH} rounded up to whole prompt groups")
    notes.append(f"data order: tether {tether['sampler']}, TRL {trl['sampler']}")
    notes.append(f"optimizer: tether {tether['optimizer']}, TRL {trl['optimizer']}; the lr schedules differ (no effect on speed)")
    notes.append("TRL's RewardConfig defaults to gradient_checkpointing=True and bf16=True; both are off here, as in tether")
    notes.append("TRL computes min/mean/max reward, accuracy and margin with .item() every step; tether computes "
                 "loss, accuracy, margin, score and grad norm every step")
    return notes


def report(args, runs: dict[str, list[dict]], counts: dict, model, peak: float) -> None:
    from tether.models import count_parameters

    parameters = count_parameters(model)
    summaries = {side: [summarise(r, args.warmup, model, peak) for r in rs] for side, rs in runs.items()}
    best = {side: max(range(args.rounds), key=lambda i: ss[i]["pairs_per_s"]) for side, ss in summaries.items()}
    tether, trl = runs["tether"][best["tether"]], runs["trl"][best["trl"]]
    rows = [summaries["tether"][best["tether"]], summaries["trl"][best["trl"]]]
    print(f"\nreward model, {args.data} data, {args.size} Llama ({parameters / 1e6:.2f}M parameters), {BATCH} pairs per "
          f"step, max length {MAX_LENGTH}, {args.steps} steps, timed over the last {args.steps - args.warmup}, best "
          f"of {args.rounds} round(s) per side, torch threads {rows[0]['threads']} (tether) / {rows[1]['threads']} "
          f"(TRL); TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}")
    print_table(rows, peak)
    notes = differences(tether, trl, counts)
    busy = busy_note([r["load"] for rs in runs.values() for r in rs])
    if busy:
        notes.append(busy)
    for side, ss in summaries.items():
        print(f"{side} pairs/s per round: " + ", ".join(f"{x['pairs_per_s']:.1f}" for x in ss))
    # A round's two runs are minutes apart, so their ratio sees similar load; the median of those is a
    # second estimate beside the ratio of the best rounds.
    round_ratios = [t["pairs_per_s"] / p["pairs_per_s"] for t, p in zip(summaries["tether"], summaries["trl"])]
    print(f"pairs/s ratio per round: {', '.join(f'{x:.2f}x' for x in round_ratios)} "
          f"(median {statistics.median(round_ratios):.2f}x)")
    print("\ndifferences:\n" + "\n".join(f"- {n}" for n in notes))
    trl_name = ("" if args.trl_sampler == "random" else f"-trl-{args.trl_sampler}") \
        + ("-tether-compile" if args.tether_compile else "") + ("-trl-compile" if args.trl_compile else "")
    write_result(args.results_dir / f"rm-{args.data}{trl_name}-{args.size}.json", {
        "data": args.data, "size": args.size, "counts": counts, "steps": args.steps, "warmup": args.warmup,
        "batch_size": BATCH, "max_length": MAX_LENGTH, "parameters": parameters, "peak_flops": peak,
        "tether": rows[0], "trl": rows[1], "rounds": summaries,
        "ratio_pairs_per_s": rows[0]["pairs_per_s"] / rows[1]["pairs_per_s"],
        "ratio_pairs_per_s_per_round": round_ratios, "versions": trl["versions"], "differences": notes, "raw": runs})


def profile(folder: Path, steps: int, warmup: int) -> None:
    """Profile `steps` of tether's rm steps after `warmup` unprofiled ones; print the time by region and op.

    Regions are marked by wrapping the functions `train_step` calls (collate_pairs, pair_rewards,
    bradley_terry_loss, clip_grad_norm_) with record_function; the backward pass is what is left.
    """
    os.environ["TETHER_QUIET"] = "1"
    import torch
    from torch.profiler import ProfilerActivity, record_function

    from tether.config import load_config
    from tether.stages import rm

    def marked(name, fn):
        def wrapper(*a, **k):
            with record_function(name):
                return fn(*a, **k)
        return wrapper

    for name in ("collate_pairs", "pair_rewards", "bradley_terry_loss"):
        setattr(rm, name, marked(f"rm.{name}", getattr(rm, name)))
    torch.nn.utils.clip_grad_norm_ = marked("rm.clip_grad_norm_", torch.nn.utils.clip_grad_norm_)
    train_step, seen, prof = rm.train_step, [0], torch.profiler.profile(activities=[ProfilerActivity.CPU])

    def step(*a, **k):
        seen[0] += 1
        if seen[0] == warmup + 1:
            prof.start()
        with record_function("rm.train_step"):
            row = train_step(*a, **k)
        if seen[0] == warmup + steps:
            prof.stop()
        return row

    rm.train_step = step
    rm.run(load_config(rm.RMConfig, None, tether_overrides(folder, warmup + steps)))
    events = {e.key: e for e in prof.key_averages()}
    total = events["rm.train_step"].cpu_time_total
    regions = {k: events[k].cpu_time_total for k in events if k.startswith("rm.") and k != "rm.train_step"}
    optimizer = sum(e.cpu_time_total for k, e in events.items() if k.startswith("Optimizer.step"))
    zero_grad = sum(e.cpu_time_total for k, e in events.items() if k.startswith("Optimizer.zero_grad"))
    print(f"\ntether rm step, {steps} steps profiled ({total / steps / 1e3:.1f} ms per step, torch threads "
          f"{torch.get_num_threads()}):")
    parts = {**regions, "optimizer.step": optimizer, "optimizer.zero_grad": zero_grad}
    parts["backward and the rest (by difference)"] = total - sum(parts.values())
    for name, t in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<40}{t / steps / 1e3:>8.1f} ms{100 * t / total:>7.1f}%")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description="tether rm vs TRL RewardTrainer throughput (CPU, fp32)")
    p.add_argument("--data", choices=["rated", "unique", "hh"], default="rated",
                   help="rated: 3 simulated ratings per pair (ties dropped); unique: one row per pair; hh: HH-RLHF "
                        "comparisons that fit 256 tokens whole (long multi-turn prompts shared by both responses)")
    p.add_argument("--hh-pairs", type=int, default=400, help="HH-RLHF comparisons used with --data hh")
    p.add_argument("--size", choices=list(SIZES), default="5m", help="model size")
    p.add_argument("--trl-sampler", choices=["random", "group_by_length"], default="random",
                   help="TRL's train_sampling_strategy (random is TRL's default; group_by_length its fastest here)")
    p.add_argument("--tether-compile", action="store_true", help="tether with torch_compile=true (its layers compiled)")
    p.add_argument("--trl-compile", action="store_true",
                   help="TRL with torch_compile=True (transformers documents it for training speed)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per side")
    p.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per side, alternating which goes first; the fastest run of each side is reported")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP + " (also for the matmul peak)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="afterwards, profile N of tether's steps (after --warmup) and print where the time goes")
    p.add_argument("--keep", action="store_true", help="keep the temp folder of inputs and runs")
    add_results_arg(p)
    p.add_argument("--tether-worker", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--profile-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tether_worker:
        return tether_worker(Path(args.tether_worker[0]), args.steps, Path(args.tether_worker[1]), args.tether_compile)
    if args.profile_worker:
        return profile(Path(args.profile_worker), args.profile, args.warmup)
    if not 1 <= args.warmup < args.steps or args.rounds < 1:
        sys.exit("need 1 <= --warmup < --steps and --rounds >= 1")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # for the matmul peak; the sides get OMP_NUM_THREADS
    ensure_peer()
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-rm-"))
    try:
        print(f"inputs in {folder}", flush=True)
        model, counts = prepare(folder, args.data, args.size, args.hh_pairs)
        peak = matmul_peak()
        runs = alternate(args.rounds, ("tether", "trl"), lambda side: run_side(side, folder, args))
        peak = max(peak, matmul_peak())  # other processes only ever lower it: keep the best
        report(args, runs, counts, model, peak)
        if args.profile:
            print(sh([sys.executable, __file__, "--warmup", args.warmup, "--profile", args.profile,
                      "--profile-worker", folder], env=side_env(args.threads)).stdout)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

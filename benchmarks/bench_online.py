"""Benchmark: tether's online RL (PPO, GRPO, RLOO) against TRL, measured in one run, ratios printed.

    .venv/bin/python benchmarks/bench_online.py [--algo ppo,grpo,rloo] [--size 5m|30m] [--steps 10] [--warmup 2]
                                                [--rounds 2] [--threads 1] [--profile] [--results-dir DIR]

1. Make sure the peer venvs exist: `.peer` (current TRL: GRPOTrainer, RLOOTrainer) and `.peer19` (TRL 1.9.0, the
   last release with PPO: `trl.experimental.ppo.PPOTrainer`) (common.ensure_peer, common.ensure_peer19).
2. Build the shared inputs once in a temp folder: a BPE tokenizer trained on the tiny world's pretraining corpus, a
   freshly initialised Llama of `--size` (5m: tether's "small" preset, 4.6M parameters; 30m: 34M, added to the
   presets in this process only: common.SIZES) saved as a HF folder, the world's 600 train prompts (prompts.jsonl for tether;
   prompts.json with tether's token ids for the peers) and, for PPO, a tether reward model on the same backbone
   (`RewardModel.from_backbone`, untrained head; it is also where tether's separate critic starts).
3. Measure the fp32 matmul peak (2048x2048, on CPU time) for model FLOP utilisation (MFU), before and after the runs.
4. Per algorithm, run tether's stage (`tether.stages.ppo.run`, in a subprocess: this file as a worker, so its RSS is
   its own) and TRL's trainer (benchmarks/peer_ppo.py in .peer19, benchmarks/peer_grpo.py in .peer), `--rounds`
   times each, alternating the order (common.alternate). Same model, same prompts, same settings:
   - ppo:  16 prompts per step, one response each, 32 new tokens, stop at EOS, temperature 1, 4 PPO epochs of one
           minibatch of 16 (4 optimizer steps per step), KL coef 0.05 (k1, in the reward), a reward model and a
           separate value model (tether value_model=separate, started from the reward model).
   - grpo: 16 prompts x 4 completions = 64 per step, 32 new tokens, beta 0.04, one optimizer step per step, micro-
           batches of 16, the same Python reward on both sides (online_reward.py).
   - rloo: as grpo with k = 4, beta 0.05 (sequence KL in the reward).
5. Steady-state rates over the steps after `--warmup` (medians of per-step rates; a step runs from the end of the
   step before to the end of its last optimizer step, everything between included), on two clocks: wall time, as
   the other benchmarks, and the process's CPU time, which the load from other processes on this shared 2-core
   machine barely moves (one torch thread per side), reported for each side's round with the best CPU-time rate.
   Beside them: generated tokens per step (both sides sample to near full length: untrained models rarely emit
   EOS), the time in generation, in no-grad scoring forwards and in the rest, peak RSS and MFU; print a table,
   the ratios and the differences; write benchmarks/results/online-<algo>-<size>.json (--results-dir).
   PPO also runs `tether-head` (tether's default critic, a value head; TRL's PPO has no such option).

`--profile` adds one extra tether run per algorithm under torch.profiler (a few steps, ops by self CPU time) and
prints where tether's time goes.

Absolute figures drift on a shared machine: compare only the ratios measured in one run.
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
from collections import defaultdict
from pathlib import Path

import common
from common import (
    PEER19_PYTHON,
    PEER_PYTHON,
    SIZES,
    THREADS_HELP,
    add_results_arg,
    alternate,
    busy_note,
    ensure_peer,
    ensure_peer19,
    matmul_peak,
    rss_mb,
    tether_version,
    timed_steps,
    world_model,
    write_result,
)

SEED, NEW_TOKENS, PROMPTS_PER_STEP, LR = 0, 32, 16, 1e-5
# Per algorithm: responses per prompt, the unit of the headline rate, and the tether settings.
ALGOS = {
    "ppo": {"group": 1, "unit": "episodes", "kl": 0.05, "epochs": 4, "minibatch": 16, "micro": 16,
            "tether": ["reward=rm", "value_model=separate", "whiten_advantages=true", "kl_estimator=k1"]},
    "grpo": {"group": 4, "unit": "completions", "kl": 0.04, "epochs": 1, "minibatch": 64, "micro": 16,
             "tether": ["reward=callable", "reward_fn=online_reward:length_reward", "whiten_advantages=false"]},
    "rloo": {"group": 4, "unit": "completions", "kl": 0.05, "epochs": 1, "minibatch": 64, "micro": 16,
             "tether": ["reward=callable", "reward_fn=online_reward:length_reward", "whiten_advantages=false",
                        "kl_estimator=k1"]},
}
# Nominal model work per step, in forward-equivalents over every real (prompt + generated) token: the same count on
# both sides, so MFU compares like with like. Rollout 1 (prefill + decode); no-grad forwards the algorithm needs
# (PPO: reference, value, reward; GRPO and RLOO: reference; the old log-probs come with the rollout); training
# 3 per trained model per epoch (forward + backward). PPO with a value head (tether-head) needs less: the no-grad
# policy forward gives the values (and the old log-probs), and only the policy trains.
NOMINAL_FORWARDS = {"ppo": 1 + 3 + 3 * 2 * 4, "grpo": 1 + 1 + 3, "rloo": 1 + 1 + 3}
NOMINAL_FORWARDS_HEAD = 1 + 3 + 3 * 1 * 4


def nominal_forwards(algo: str, side: str) -> int:
    return NOMINAL_FORWARDS_HEAD if algo == "ppo" and side == "tether-head" else NOMINAL_FORWARDS[algo]
# tether sides beside "tether" (the like-for-like run): label -> what it changes.
VARIANTS = {
    "tether-head": "tether's default critic for PPO, value_model=head: a linear value head on the policy's last "
                   "hidden state instead of a separate value model (TRL's PPOTrainer has no such option), so the "
                   "critic costs no backbone forward/backward of its own",
}


# ---------------------------------------------------------------------------------------------
# 2. Shared inputs


def prepare(folder: Path, size: str, algos: list[str]):
    """Write model/, prompts.jsonl, prompts.json and (for PPO) rm/ under `folder`; return the built model."""
    from tether.models import load_tokenizer
    from tether.reward import RewardModel
    from tether.chat import chat_format
    from tether.world.world import World, WorldConfig

    model = world_model(folder / "model", SIZES[size], SEED)
    tokenizer = load_tokenizer(str(folder / "model"))
    texts = [q.text for q in World(WorldConfig()).train_queries()]
    rows = [{"text": t, "ids": chat_format(tokenizer).prompt_ids([{"role": "user", "content": t}])} for t in texts]
    (folder / "prompts.json").write_text(json.dumps(rows))
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    if "ppo" in algos:
        RewardModel.from_backbone(str(folder / "model"), pool="last").save_pretrained(folder / "rm")
    return model


# ---------------------------------------------------------------------------------------------
# 4. The tether side (this file re-run as a worker)


def tether_overrides(folder: Path, algo: str, steps: int, out: Path, variant: str = "tether") -> list[str]:
    a = ALGOS[algo]
    head = ["value_model=head"] if variant == "tether-head" else []
    return [f"model={folder / 'model'}", f"prompts={folder / 'prompts.jsonl'}", f"reward_model={folder / 'rm'}",
            f"out={out}", f"algorithm={algo}", f"rollout_batch={PROMPTS_PER_STEP}", f"group_size={a['group']}",
            f"max_new_tokens={NEW_TOKENS}", "temperature=1.0", f"kl_coef={a['kl']}", f"ppo_epochs={a['epochs']}",
            f"minibatch_size={a['minibatch']}", f"micro_batch_size={a['micro']}", f"lr={LR}", f"max_steps={steps}",
            "sample_every=0", "eval_prompts=0", "save_every=0", "monitor.enabled=false", f"seed={SEED}", *a["tether"], *head]


def tether_worker(folder: Path, algo: str, steps: int, out: Path, variant: str = "tether",
                  profile: bool = False) -> None:
    """Run `tether.stages.ppo.run` with thin timers around the functions the loop calls by module name.

    The wrappers only read the clock and the tensors they pass on: `sample` (the rollout), `make_experience`
    (old log-probs, values and reference log-probs), the reward source, `update` (the optimizer steps), and the
    step's end (the metrics line written last thing in a step).
    """
    os.environ["TETHER_QUIET"] = "1"  # no progress bar; TRL's tqdm is off too
    import torch

    from tether.config import load_config
    from tether.stages import online
    from tether.stages import ppo as stage

    records: list[dict] = []
    current: dict = defaultdict(float)
    clock: dict = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            result = fn(*args, **kwargs)
            current[name] += time.perf_counter() - t
            current[name[:-2] + "_cpu"] = current.get(name[:-2] + "_cpu", 0.0) + time.process_time() - c
            return result
        return wrapper

    original_sample, original_source = online.sample, online.make_reward_source

    def sample(*args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        r = original_sample(*args, **kwargs)
        current["generate_s"] += time.perf_counter() - t
        current["generate_cpu"] = current.get("generate_cpu", 0.0) + time.process_time() - c
        current.update(rows=int(r.response_ids.size(0)), generated_tokens=int(r.lengths.sum()),
                       prompt_tokens=int(r.prompt_mask.sum()), eos_rows=int(r.has_eos.sum()),
                       padded_columns=int(r.prompt_ids.size(1) + r.response_ids.size(1)),
                       response_columns=int(r.response_ids.size(1)))
        return r

    class TimedSource:
        def __init__(self, source):
            self.source = source

        def __call__(self, prompts, responses):
            t, c = time.perf_counter(), time.process_time()
            scores = self.source(prompts, responses)
            current["reward_s"] += time.perf_counter() - t
            current["reward_cpu"] = current.get("reward_cpu", 0.0) + time.process_time() - c
            return scores

        def __getattr__(self, name):  # e.g. `raw`, read with getattr(source, "raw", None)
            return getattr(self.source, name)

    class Metrics(online.MetricsLog):
        def __init__(self, path, resume_step):
            super().__init__(path, resume_step)
            if path.name == "metrics.jsonl":  # created right before the loop, after setup (model loading)
                clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def write(self, row):
            super().write(row)
            if self.path.name == "metrics.jsonl" and row.get("step", 0) >= 1:
                records.append({"time": time.perf_counter() - clock["start"],
                                "cpu": time.process_time() - clock["cpu_start"], **current})
                current.clear()

    online.sample = sample
    online.make_reward_source = lambda *a, **kw: TimedSource(original_source(*a, **kw))
    online.make_experience = timed("score_s", online.make_experience)
    online.update = timed("update_s", online.update)
    online.MetricsLog = Metrics

    cfg = load_config(stage.PPOConfig, None,
                      tether_overrides(folder, algo, steps, out.parent / "tether-run", variant))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            stage.run(cfg)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
        Path(str(out) + ".profile.txt").write_text(table)
    else:
        stage.run(cfg)
    rss = rss_mb()
    steps_out = [{"step": i + 1, **r} for i, r in enumerate(records)]
    # old log-probs: from the sampler (reuse_rollout_logprobs) unless the value head makes a policy pass anyway
    head, separate = variant == "tether-head", algo == "ppo" and variant != "tether-head"
    lp = not head
    critic = "none" if algo != "ppo" else "value head on the policy" if head else \
        "separate value model (reward model's backbone + head)"
    forwards = (["policy (values from its value head, old log-probs)"] if head else
                [] if lp else ["policy (old log-probs)"]) + (["separate critic (values)"] if separate else [])
    forwards += ["reference"] + (["reward model (on re-encoded text)"] if algo == "ppo" else [])
    result = {"side": variant, "steps": steps_out, "optimizer": "torch AdamW fused",
              "work": ("sample (KV cache, inverse-CDF draw" + ("; its log-probs are the old log-probs" if lp else "")
                       + "); no-grad forwards: " + ", ".join(forwards)
                       + f"; train: policy{' + separate critic' if separate else ''} forward/backward on "
                         "[prompt; response], logits of the response positions only (logits_to_keep)"),
              "critic": critic, "threads": torch.get_num_threads(), "peak_rss_mb": rss}
    out.write_text(json.dumps(result))


def run_side(side: str, folder: Path, algo: str, args) -> dict:
    """One timed run of `side` in its own process (fresh run folders)."""
    a = ALGOS[algo]
    if algo == "ppo":
        peer, script = PEER19_PYTHON, "peer_ppo.py"
        peer_args = ["--steps", args.steps, "--batch", PROMPTS_PER_STEP, "--new-tokens", NEW_TOKENS,
                     "--ppo-epochs", a["epochs"]]
    else:
        peer, script = PEER_PYTHON, "peer_grpo.py"
        peer_args = ["--algorithm", algo, "--steps", args.steps, "--prompts-per-step", PROMPTS_PER_STEP,
                     "--generations", a["group"], "--micro-batch", a["micro"], "--new-tokens", NEW_TOKENS,
                     "--beta", a["kl"]]
    peer_args += ["--model", folder / "model", "--prompts", folder / "prompts.json", "--workdir", folder / "trl-run"]
    # common.run_side knows one tether side; the variant is passed to the worker, which names its result after it
    return common.run_side("trl" if side == "trl" else "tether", folder, args.threads,
                           [__file__, "--algo", algo, "--steps", args.steps, "--variant", side, "--tether-worker",
                            folder], script, peer_args, peer_python=peer)


# ---------------------------------------------------------------------------------------------
# 5. Summary


def summarise(result: dict, algo: str, warmup: int, model, peak: float) -> dict:
    """Steady-state rates over steps (warmup, last], on two clocks.

    Wall time: medians of per-step rates (a burst from another process on the shared machine slows a step several
    times; a median ignores it), the wall rate (total / total) beside them. CPU time: the same medians over the
    process's CPU time (time.process_time); with one torch thread it is the time the side computed, which the
    load from other processes barely changes (only through shared caches and memory bandwidth), so it is the
    steadier measure on a loaded machine. Phases (generation, scoring, rest) on both clocks.
    """
    from tether.models import model_flops_per_token

    med = statistics.median
    timed, wall = timed_steps(result["steps"], warmup)
    _, cpu = timed_steps(result["steps"], warmup, key="cpu")
    rows = [s["rows"] for s in timed]
    seq_tokens = [s["prompt_tokens"] + s["generated_tokens"] for s in timed]
    mean_len = sum(seq_tokens) / sum(rows)
    flops_per_forward_token = model_flops_per_token(model, round(mean_len)) / 3
    nominal = [nominal_forwards(algo, result["side"]) * flops_per_forward_token * n for n in seq_tokens]  # FLOPs
    out = {"side": result["side"], "timed_steps": len(timed), "step_seconds": wall, "step_cpu_seconds": cpu,
           "wall_rate": sum(rows) / sum(wall), "rows_per_step": sum(rows) / len(timed),
           "generated_tokens_per_step": statistics.mean(s["generated_tokens"] for s in timed),
           "prompt_tokens_per_step": statistics.mean(s["prompt_tokens"] for s in timed),
           "eos_rows_per_step": statistics.mean(s["eos_rows"] for s in timed),
           "mean_seq_len": mean_len, "nominal_forwards": nominal_forwards(algo, result["side"]),
           "nominal_gflop_per_step": statistics.mean(nominal) / 1e9,
           "peak_rss_mb": result["peak_rss_mb"], "threads": result["threads"]}
    for clock, durations, suffix in (("wall", wall, "_s"), ("cpu", cpu, "_cpu")):
        generate = [s["generate" + suffix] for s in timed]
        score = [s["score" + suffix] + s.get("reward" + suffix, 0.0) for s in timed]
        tag = "" if clock == "wall" else "_cpu"
        out.update({
            f"rate{tag}": med(r / d for r, d in zip(rows, durations)), f"step{tag}_s": med(durations),
            f"generate{tag}_s": med(generate), f"score{tag}_s": med(score),
            f"rest{tag}_s": med(d - g - x for d, g, x in zip(durations, generate, score)),
            f"rollout_tokens_per{tag}_s": med(s["generated_tokens"] / g for s, g in zip(timed, generate)),
            f"mfu{tag}": med(f / d for f, d in zip(nominal, durations)) / peak,
        })
        if "update" + suffix in timed[0]:
            out[f"update{tag}_s"] = med(s["update" + suffix] for s in timed)
    return out


def print_table(algo: str, rows: dict[str, dict], peak: float) -> None:
    unit = ALGOS[algo]["unit"]
    print(f"\n{'':<12}{'- wall clock -':>22}  {'- CPU time: ' + unit + '/s, seconds per step, rollout, MFU -':<62}")
    print(f"{'side':<12}{unit + '/s':>14}{'(total)':>8}  {unit + '/s':>12}{'step':>6}{'gen':>6}{'score':>6}{'rest':>6}"
          f"{'tok/s':>7}{'MFU':>7}{'gen tok':>9}{'prompt tok':>11}{'EOS rows':>9}{'peak RSS MB':>12}")
    for side, r in rows.items():
        print(f"{side:<12}{r['rate']:>14.2f}{r['wall_rate']:>8.2f}  {r['rate_cpu']:>12.2f}{r['step_cpu_s']:>6.2f}"
              f"{r['generate_cpu_s']:>6.2f}{r['score_cpu_s']:>6.2f}{r['rest_cpu_s']:>6.2f}"
              f"{r['rollout_tokens_per_cpu_s']:>7.0f}{100 * r['mfu_cpu']:>6.1f}%"
              f"{r['generated_tokens_per_step']:>9.0f}{r['prompt_tokens_per_step']:>11.0f}"
              f"{r['eos_rows_per_step']:>9.1f}{r['peak_rss_mb']:>12.0f}")
    print(f"(rates, seconds, tok/s, MFU: medians over the timed steps; (total): {unit} / wall time of all timed steps. "
          "gen: the rollout (sample / generate); score: no-grad forwards and the reward; rest: the optimizer steps "
          "and everything else; tok/s: generated tokens (EOS included) per second of rollout; gen tok, prompt tok: "
          f"per step. MFU: nominal model FLOPs per step ({NOMINAL_FORWARDS[algo]} forward-equivalents per real "
          "token, the same count for every side" + (f"; tether-head {NOMINAL_FORWARDS_HEAD}: no critic backbone"
                                                    if algo == "ppo" else "")
          + ") / CPU time of the step / fp32 matmul peak)")
    print(f"fp32 matmul peak (2048x2048, one thread, CPU time): {peak / 1e9:.1f} GFLOP/s")


def ratios(t: dict, p: dict) -> dict[str, float]:
    """Side `t` against side `p`: rates as t/p, times as p/t (how many times less), RSS as t/p."""
    out = {"peak_rss_mb": t["peak_rss_mb"] / p["peak_rss_mb"], "wall_rate": t["wall_rate"] / p["wall_rate"]}
    for tag in ("", "_cpu"):
        out[f"rate{tag}"] = t[f"rate{tag}"] / p[f"rate{tag}"]
        out[f"rollout_tokens_per{tag}_s"] = t[f"rollout_tokens_per{tag}_s"] / p[f"rollout_tokens_per{tag}_s"]
        for phase in ("generate", "score", "rest"):
            out[f"{phase}{tag}_s"] = p[f"{phase}{tag}_s"] / t[f"{phase}{tag}_s"]
    return out


def differences(algo: str, raw: dict[str, dict], rows: dict[str, dict]) -> list[str]:
    """What is not the same on both sides, in words (the like-for-like "tether" side against TRL; variants last)."""
    t, p = rows["tether"], rows["trl"]
    if algo == "ppo":
        same = "same model folder; TRL gets tether's prompt token ids as input_ids (left-padded by its collator)"
    else:
        mismatches = sum(s.get("prompt_mismatches", 0) for s in raw["trl"]["steps"])
        same = (f"same model folder, same prompt token ids (TRL's own chat-template encoding checked against "
                f"tether's: {mismatches} mismatches)")
    notes = [
        same,
        ("prompt order: each side shuffles the 600 prompts with its own seed, so the timed steps hold different "
         f"prompts (mean prompt tokens per step: tether {t['prompt_tokens_per_step']:.0f}, TRL "
         f"{p['prompt_tokens_per_step']:.0f})"),
        (f"generated tokens per step (EOS included): tether {t['generated_tokens_per_step']:.0f}, TRL "
         f"{p['generated_tokens_per_step']:.0f} of {t['rows_per_step']:.0f} x {NEW_TOKENS} (EOS rows per step: "
         f"{t['eos_rows_per_step']:.1f} vs {p['eos_rows_per_step']:.1f})"),
        *[f"work, {side}: {r['work']}" for side, r in raw.items()],
        f"optimizer: tether {raw['tether']['optimizer']}, TRL {raw['trl']['optimizer']}",
        ("TRL's configs default to gradient_checkpointing=True and bf16=True; both are off here, as in tether "
         "(fp32, no recompute); dropout is off on both sides"),
        "learning-rate schedule differs (TRL linear decay, tether constant); no effect on speed",
    ]
    if algo == "ppo":
        notes += [
            ("reward model: TRL an AutoModelForSequenceClassification (num_labels=1) on the token ids; tether a "
             "RewardModel (the same sequence classifier, pool=last) that scores the decoded response re-encoded "
             "with the prompt (decode + tokenise + one forward); both heads untrained"),
            ("value model: TRL AutoModelForSequenceClassification from the policy folder; tether "
             "value_model=separate, the reward model's backbone and head (same shapes)"),
            ("old log-probs: TRL takes them from generate's scores (no policy forward); tether from its sampler "
             "(reuse_rollout_logprobs) with the separate critic, and from the value head's policy pass with the head"),
            ("TRL's training forward computes logits at every position of [prompt; response]; tether only at the "
             "response positions"),
            "advantages whitened on both sides; KL k1 in the reward, coef 0.05; missing-EOS penalty off",
        ]
    elif algo == "grpo":
        notes += [
            ("old log-probs: TRL skips them (num_iterations=1, one generation per optimizer step: ratio 1, old = "
             "current detached); tether takes them from its sampler (reuse_rollout_logprobs: no policy forward)"),
            ("loss: TRL loss_type='grpo' (per-sequence mean, tether's 'sequence' aggregation); scale_rewards='group' "
             "on both sides; k3 KL in the loss, beta 0.04"),
        ]
    else:
        notes.append("old log-probs: TRL runs a no-grad old-policy forward, tether takes them from its sampler; both "
                     "run a reference forward per step; KL k1 summed "
                     "over the sequence in the reward, beta 0.05; leave-one-out baseline over k=4; no advantage "
                     "whitening")
    for side in raw:
        if side in VARIANTS:
            notes.append(f"{side}: {VARIANTS[side]}")
    return notes


def report(args, algo: str, runs: dict[str, list[dict]], model, peak: float) -> dict:
    from tether.models import count_parameters

    summaries = {side: [summarise(r, algo, args.warmup, model, peak) for r in rs] for side, rs in runs.items()}
    best = {side: max(range(args.rounds), key=lambda i: ss[i]["rate_cpu"]) for side, ss in summaries.items()}
    rows = {side: summaries[side][best[side]] for side in runs}
    raw = {side: runs[side][best[side]] for side in runs}
    versions = {**raw["trl"]["versions"], "tether": tether_version()}
    a = ALGOS[algo]
    print(f"\n=== {algo.upper()}, {args.size} model ({count_parameters(model) / 1e6:.2f}M parameters): "
          f"{PROMPTS_PER_STEP} prompts x {a['group']} = {PROMPTS_PER_STEP * a['group']} {a['unit']} per step, "
          f"{NEW_TOKENS} new tokens, {a['epochs']} epoch(s) of minibatch {a['minibatch']} (micro {a['micro']}), "
          f"KL coef {a['kl']}; {args.steps} steps, timed over the last {args.steps - args.warmup}, best of "
          f"{args.rounds} round(s) per side, torch threads {rows['tether']['threads']}; TRL {versions['trl']} "
          f"({raw['trl'].get('trainer', 'experimental.ppo.PPOTrainer')}), transformers {versions['transformers']}")
    print_table(algo, rows, peak)
    r = {side: ratios(rows[side], rows["trl"]) for side in rows if side != "trl"}
    for side, x in r.items():
        print(f"ratio {side}/TRL: {a['unit']}/s {x['rate_cpu']:.2f}x on CPU time, {x['rate']:.2f}x on wall time "
              f"({x['wall_rate']:.2f}x total); rollout tokens/s {x['rollout_tokens_per_cpu_s']:.2f}x; CPU time in "
              f"generation {x['generate_cpu_s']:.2f}x less, scoring {x['score_cpu_s']:.2f}x less, rest "
              f"{x['rest_cpu_s']:.2f}x less; peak RSS {x['peak_rss_mb']:.2f}x")
    notes = differences(algo, raw, rows)
    busy = busy_note([run["load"] for rs in runs.values() for run in rs])
    if busy:
        notes.append(busy)
    for side, ss in summaries.items():
        print(f"{side} {a['unit']}/s per round, CPU time (wall): "
              + ", ".join(f"{x['rate_cpu']:.2f} ({x['rate']:.2f})" for x in ss))
    print("\ndifferences:\n" + "\n".join(f"- {n}" for n in notes))
    summary = {"algorithm": algo, "size": args.size, "steps": args.steps, "warmup": args.warmup,
               "rounds": args.rounds, "prompts_per_step": PROMPTS_PER_STEP, "group_size": a["group"],
               "new_tokens": NEW_TOKENS, "settings": {k: v for k, v in a.items() if k != "tether"},
               "tether_overrides": {side: tether_overrides(Path("FOLDER"), algo, args.steps, Path("FOLDER/run"), side)
                                    for side in rows if side != "trl"},
               "parameters": count_parameters(model), "peak_flops": peak, "sides": rows, "ratios": r,
               "per_round": summaries, "versions": versions, "differences": notes, "raw": runs}
    write_result(args.results_dir / f"online-{algo}-{args.size}.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# --profile: where tether's time goes


def profile_tether(folder: Path, algo: str, args) -> None:
    """One extra tether run under torch.profiler; print its per-phase times and the top ops by self CPU time."""
    out = folder / f"tether-profile-{algo}.json"
    shutil.rmtree(folder / "tether-run", ignore_errors=True)
    common.sh([sys.executable, __file__, "--algo", algo, "--steps", min(args.steps, 4), "--profile",
               "--tether-worker", folder, out], env=common.side_env(args.threads))
    result = json.loads(out.read_text())
    print(f"\n--- tether {algo} under torch.profiler ({len(result['steps'])} steps; the profiler slows small ops) ---")
    for s in result["steps"]:
        print("  step " + str(s["step"]) + ": " + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k.endswith("_s")))
    text = Path(str(out) + ".profile.txt").read_text()
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"online-{algo}-{args.size}-profile.txt").write_text(text)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description="tether PPO/GRPO/RLOO vs TRL throughput (CPU, fp32)")
    p.add_argument("--algo", default="ppo,grpo,rloo", help="comma-separated, from ppo, grpo, rloo")
    p.add_argument("--size", choices=list(SIZES), default="5m")
    p.add_argument("--steps", type=int, default=10, help="steps (rollout batches) per side and round")
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the timing")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per side, alternating the order; the fastest run of each side is reported")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--no-head", action="store_true",
                   help="PPO: leave out the tether-head side (tether's default value head; TRL has no such option)")
    p.add_argument("--profile", action="store_true", help="also profile one tether run per algorithm")
    p.add_argument("--variant", default="tether", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the temp folder of inputs and runs")
    add_results_arg(p)
    p.add_argument("--tether-worker", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tether_worker:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # online_reward, for reward_fn
        return tether_worker(Path(args.tether_worker[0]), args.algo, args.steps, Path(args.tether_worker[1]),
                             args.variant, args.profile)
    algos = args.algo.split(",")
    if any(a not in ALGOS for a in algos):
        sys.exit(f"--algo: choose from {', '.join(ALGOS)}")
    if not 0 <= args.warmup < args.steps or args.rounds < 1:
        sys.exit("need 0 <= --warmup < --steps and --rounds >= 1")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # for the matmul peak; the sides get OMP_NUM_THREADS
    if any(a != "ppo" for a in algos):
        ensure_peer()
    if "ppo" in algos:
        ensure_peer19()
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-online-"))
    started = time.time()
    try:
        print(f"inputs in {folder}", flush=True)
        model = prepare(folder, args.size, algos)
        peak = matmul_peak(clock=time.process_time)  # MFU is on CPU time: the peak too
        for algo in algos:  # each algorithm reported (and written) as soon as its runs are done
            sides = ("tether", "trl", *(["tether-head"] if algo == "ppo" and not args.no_head else []))
            runs = alternate(args.rounds, sides, lambda side: run_side(side, folder, algo, args))  # noqa: B023
            peak = max(peak, matmul_peak(clock=time.process_time))  # other processes only lower it: keep the best
            report(args, algo, runs, model, peak)
            if args.profile:
                profile_tether(folder, algo, args)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\ntotal {time.time() - started:.0f}s; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

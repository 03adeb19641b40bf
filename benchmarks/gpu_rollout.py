"""One GPU: rollout tokens/s of tether's sampler (dynamic, static, compiled static cache) against HF `generate`
(its default DynamicCache, and its static cache + torch.compile), at batch 64 on a Qwen2-0.5B-architecture model
(random init, bf16), with peak CUDA memory per side; then a GRPO step of tether against TRL's GRPOTrainer.

    python benchmarks/gpu_rollout.py [--out DIR] [--batch 64] [--prompt-len 128] [--new-tokens 256] [--rounds 2]
                                     [--grpo-steps 3] [--no-grpo]
    python benchmarks/gpu_rollout.py --device cpu --tiny        # checks the script on the CPU (about a minute)

1. Rollouts, one process, the model built here from Qwen2-0.5B's config (full_size_check.QWEN2_05B: 494M
   parameters, vocabulary 151,936; no download, no tokenizer): `--batch` prompts of random ids, lengths uniform in
   [prompt-len / 2, prompt-len] (left padding), temperature 1, top_k 0, top_p 1 on every side, the same EOS and pad
   ids. Sides: generate (HF defaults: DynamicCache, no compile), generate-static-compiled (`cache_implementation=
   "static"`: HF compiles its decoding forward itself on CUDA, `CompileConfig()` defaults, reduce-overhead = CUDA
   graphs: HF's fastest path), tether-dynamic, tether-static and tether-compiled (`sample(cache="static",
   compile=True)`). One warm-up rollout per side (its seconds: compiling and graph capture), then `--rounds`
   rounds of one rollout per side, the order rotating; tokens/s per side is the median over rounds, the ratio to
   generate the median of same-round ratios. Tokens: generated non-pad tokens (an untrained model almost never
   emits EOS, so every side runs the full length). Memory: torch.cuda.max_memory_allocated over the warm-up and over
   the timed rollouts, and what was allocated before (weights; compiled sides keep their graph pools).
2. GRPO (unless --no-grpo): a model folder of the same architecture with tests/archkit.py's ChatML tokenizer (its
   ids are a subset of the vocabulary), the tiny world's train prompts, 8 prompts x 8 completions = 64 per step,
   128 new tokens, beta 0.04, micro-batches of 16, the reward of benchmarks/online_reward.py on both sides, bf16
   autocast over fp32 weights on both sides. tether: `tether grpo` through `tether.cli.main` with
   rollout_cache=compiled, seconds per step from its metrics (batch / samples_per_s); TRL: benchmarks/peer_grpo.py
   --device cuda in a subprocess, seconds per step from its step clock. The first step of each (compiling, CUDA
   init) is left out. TRL is not in the GPU image: carry its wheels, or the TRL side is recorded as skipped. The
   versions the CPU peers use (.peer): `pip download --no-deps --only-binary=:all: --python-version 3.12
   --platform manylinux2014_x86_64 -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19`, then
   on the GPU machine `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site.
3. Print one JSON line per side and write `gpu_rollout.json` under --out (default: $OUT, else
   benchmarks/results).

`--device cpu --tiny`: a 2-layer, 64-wide model of the same vocabulary, fp32, torch.compile with the eager backend on
both compiled sides (dynamo's capture, no Inductor: the script's check, not a speed figure), batch 8, 16 new tokens,
GRPO with 2 prompts x 4; TRL's side runs where trl is importable or in `--peer-python` (e.g. .peer/bin/python).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from full_size_check import QWEN2_05B, TINY  # noqa: E402

SIDES = ("generate", "generate-static-compiled", "tether-dynamic", "tether-static", "tether-compiled")
EOS, PAD = 151645, 151643  # Qwen2's <|im_end|> and <|endoftext|>
GRPO = dict(prompts=8, group=8, new_tokens=128, micro=16, beta=0.04)
TINY_GRPO = dict(GRPO, prompts=2, group=4, new_tokens=16, micro=4)  # the CPU check: its vocabulary is 151,936


# ---------------------------------------------------------------------------------------------
# 1. Rollouts


def build_model(tiny: bool, device: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD, **(TINY if tiny else QWEN2_05B))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


def random_prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g).tolist()
    return [torch.randint(0, min(vocab, PAD), (n,), generator=g).tolist() for n in lengths]


def rollout_fn(model, prompts: list[list[int]], new_tokens: int, device: str):
    """`run(side, seed) -> generated non-pad tokens`, one rollout of `side` on the same prompts."""
    import torch
    from transformers import CompileConfig

    from tether import rollout as tether_rollout
    from tether.generation import left_pad

    ids, mask = (t.to(device) for t in left_pad(prompts, PAD))
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                  top_k=0, top_p=1.0, eos_token_id=EOS, pad_token_id=PAD)
    static = dict(cache_implementation="static")
    if device == "cpu":  # the script's check: dynamo's capture without Inductor, on both compiled sides
        tether_rollout.COMPILE_OPTIONS = {"backend": "eager", "fullgraph": True}
        config = CompileConfig(backend="eager", mode=None)
        config._compile_all_devices = True  # HF compiles on the CPU only when told
        static["compile_config"] = config

    def run(side: str, seed: int) -> int:
        torch.manual_seed(seed)
        if side.startswith("generate"):
            with torch.inference_mode():
                out = model.generate(**common, **(static if side == "generate-static-compiled" else {}))
            return int((out[:, ids.size(1):] != PAD).sum())
        cache = side.removeprefix("tether-")
        r = tether_rollout.sample(model, prompts, max_new_tokens=new_tokens, temperature=1.0, eos_token_id=EOS,
                                  pad_token_id=PAD, generator=torch.Generator(device).manual_seed(seed),
                                  cache="static" if cache == "compiled" else cache, compile=cache == "compiled")
        return int(r.lengths.sum())

    return run


def timed(run, side: str, seed: int, cuda: bool) -> dict:
    """One rollout: tokens, seconds, and CUDA memory allocated before it and at its peak (GiB)."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**30 if cuda else None
    t = time.perf_counter()
    n = run(side, seed)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"tokens": n, "seconds": seconds, "allocated_before_gib": before, "peak_gib": peak}


def measure_rollouts(args) -> dict:
    """Warm-up then interleaved rounds for every side; the summary per side. A side that fails is recorded with its
    error and left out of the rounds: one GPU run should bring back every figure it can."""
    import torch

    cuda = args.device == "cuda"
    model = build_model(args.tiny, args.device)
    prompts = random_prompts(args.batch, args.prompt_len, model.config.vocab_size)
    run = rollout_fn(model, prompts, args.new_tokens, args.device)
    warm, errors = {}, {}
    for side in args.sides:
        try:
            warm[side] = timed(run, side, 0, cuda)
        except Exception as e:  # noqa: BLE001 (recorded, the other sides still run)
            errors[side] = f"{type(e).__name__}: {e}"[:3000]
            print(json.dumps({"side": side, "error": errors[side]}), flush=True)
    sides = [side for side in args.sides if side in warm]
    rounds: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            rounds[side].append(timed(run, side, 1 + r, cuda))
    summary = {side: summarise(side, rounds, warm[side], cuda) for side in sides}
    if "generate-static-compiled" in summary:
        summary["generate-static-compiled"]["compiled_by_hf"] = hasattr(model, "_compiled_call")
    for side, row in summary.items():
        print(json.dumps({"side": side, **row}), flush=True)
    info = {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype),
            "prompt_tokens": sum(map(len, prompts)), "batch": args.batch, "new_tokens": args.new_tokens}
    del model, run
    if cuda:
        torch.cuda.empty_cache()
    return {"model": info, "sides": summary, "errors": errors}


def summarise(side: str, rounds: dict[str, list[dict]], warm: dict, cuda: bool) -> dict:
    """tokens/s (median over rounds), same-round ratios to each generate side that ran, memory, warm-up."""
    rate = {name: [x["tokens"] / x["seconds"] for x in rows] for name, rows in rounds.items()}
    row = {"tokens_per_s": statistics.median(rate[side])}
    for base in ("generate", "generate-static-compiled"):
        if base in rate:
            row[f"vs_{base.replace('-', '_')}"] = statistics.median(a / b for a, b in zip(rate[side], rate[base]))
    return {**row, "tokens_per_rollout": statistics.mean(x["tokens"] for x in rounds[side]),
            "warmup_s": warm["seconds"], "warmup_peak_gib": warm["peak_gib"],
            "peak_gib": max(x["peak_gib"] for x in rounds[side]) if cuda else None,
            "allocated_before_gib": rounds[side][-1]["allocated_before_gib"]}


# ---------------------------------------------------------------------------------------------
# 2. GRPO step, tether vs TRL


def grpo_inputs(folder: Path, tiny: bool) -> None:
    """model/ (Qwen2 shape, archkit's ChatML tokenizer), prompts.jsonl for tether, prompts.json for TRL."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import archkit
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tether.chat import chat_format
    from tether.world.world import World, WorldConfig

    tok = archkit.build_tokenizer("chatml")
    config = Qwen2Config(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **(TINY if tiny else QWEN2_05B))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    texts = [q.text for q in World(WorldConfig()).train_queries()]
    rows = [{"text": t, "ids": chat_format(tok).prompt_ids([{"role": "user", "content": t}])} for t in texts]
    (folder / "prompts.json").write_text(json.dumps(rows))
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))


def tether_grpo(folder: Path, steps: int, device: str, grpo: dict) -> dict:
    from tether.cli import main

    hw = ["device=cpu"] if device == "cpu" else ["bf16=true"]
    out = folder / "tether"
    code = main(["grpo", f"model={folder / 'model'}", f"prompts={folder / 'prompts.jsonl'}", "reward=callable",
                 "reward_fn=online_reward:length_reward", f"rollout_batch={grpo['prompts']}",
                 f"group_size={grpo['group']}", f"max_new_tokens={grpo['new_tokens']}", f"kl_coef={grpo['beta']}",
                 "ppo_epochs=1", f"minibatch_size={grpo['prompts'] * grpo['group']}",
                 f"micro_batch_size={grpo['micro']}", "whiten_advantages=false", "lr=1e-5", f"max_steps={steps}",
                 "sample_every=0", "eval_prompts=0", "eval_every=0", "save_every=0", "monitor.enabled=false",
                 "rollout_cache=compiled", f"out={out}", *hw])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
    seconds = [grpo["prompts"] * grpo["group"] / r["samples_per_s"] for r in rows if r.get("samples_per_s")]
    return {"exit": code, "step_seconds": seconds, "response_length": [r.get("response_length") for r in rows]}


def trl_grpo(folder: Path, steps: int, device: str, grpo: dict, python: str | None) -> dict:
    """TRL's side in `python` (--peer-python), or in this Python when it can import trl and datasets."""
    if python is None and (importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None):
        return {"skipped": "trl or datasets is not installed in this Python (carry their wheels, or --peer-python)"}
    out = folder / "trl.json"
    cmd = [python or sys.executable, str(HERE / "peer_grpo.py"), "--algorithm", "grpo", "--model",
           str(folder / "model"), "--prompts", str(folder / "prompts.json"), "--steps", str(steps), "--out", str(out),
           "--workdir", str(folder / "trl"), "--prompts-per-step", str(grpo["prompts"]), "--generations",
           str(grpo["group"]), "--micro-batch", str(grpo["micro"]), "--new-tokens", str(grpo["new_tokens"]),
           "--beta", str(grpo["beta"]), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"exit": proc.returncode, "error": (proc.stdout + proc.stderr)[-3000:]}
    result = json.loads(out.read_text())
    times = [0.0] + [s["time"] for s in result["steps"]]
    return {"exit": 0, "step_seconds": [b - a for a, b in zip(times, times[1:])],
            "generated_tokens": [s["generated_tokens"] for s in result["steps"]], "versions": result["versions"]}


def measure_grpo(args) -> dict:
    import torch

    grpo = TINY_GRPO if args.tiny else GRPO
    with tempfile.TemporaryDirectory(prefix="gpu_rollout_grpo_") as tmp:
        folder = Path(tmp)
        grpo_inputs(folder, args.tiny)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            tether = tether_grpo(folder, args.grpo_steps, args.device, grpo)
        except Exception as e:  # noqa: BLE001 (recorded; TRL's side still runs)
            tether = {"error": f"{type(e).__name__}: {e}"[:3000]}
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        trl = trl_grpo(folder, args.grpo_steps, args.device, grpo, args.peer_python)
    steady = {name: statistics.median(side["step_seconds"][1:]) if len(side.get("step_seconds", [])) > 1 else None
              for name, side in (("tether", tether), ("trl", trl))}
    speedup = steady["trl"] / steady["tether"] if steady["trl"] and steady["tether"] else None
    result = {"settings": {**grpo, "steps": args.grpo_steps}, "tether": tether,
              "tether_peak_gib": peak, "trl": trl, "steady_step_seconds": steady, "tether_vs_trl": speedup}
    print(json.dumps({"grpo": {"steady_step_seconds": steady, "tether_vs_trl": speedup}}), flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# 3. Main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model: checks the script")
    p.add_argument("--batch", type=int, default=None, help="prompts per rollout (default 64, 8 with --tiny)")
    p.add_argument("--prompt-len", type=int, default=None,
                   help="longest prompt (default 128, 32 with --tiny); lengths uniform in [half, this]")
    p.add_argument("--new-tokens", type=int, default=None, help="max_new_tokens (default 256, 16 with --tiny)")
    p.add_argument("--rounds", type=int, default=2, help="timed rollouts per side, after one warm-up")
    p.add_argument("--grpo-steps", type=int, default=3, help="GRPO steps per side; the first is left out")
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    p.add_argument("--no-grpo", action="store_true", help="rollouts only")
    p.add_argument("--peer-python", help="a Python with trl and datasets for TRL's side (default: this one)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"), help="folder of gpu_rollout.json")
    args = p.parse_args()
    args.batch, args.prompt_len = args.batch or (8 if args.tiny else 64), args.prompt_len or (32 if args.tiny else 128)
    args.new_tokens = args.new_tokens or (16 if args.tiny else 256)
    args.sides = args.sides.split(",")
    if not set(args.sides) <= set(SIDES):
        sys.exit(f"--sides: choose from {', '.join(SIDES)}")
    os.environ.update(TETHER_QUIET="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_rollout: torch.cuda.is_available() is False (use --device cpu --tiny to check the script)")
    started = time.perf_counter()
    result = {"args": vars(args), "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "rollout": measure_rollouts(args)}
    result["rollout_s"] = time.perf_counter() - started
    out = Path(args.out) / "gpu_rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))  # the rollouts' figures, should the GRPO part not finish
    if not args.no_grpo:
        result["grpo"] = measure_grpo(args)
    result["total_s"] = time.perf_counter() - started
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result['total_s']:.0f} s)")


if __name__ == "__main__":
    main()

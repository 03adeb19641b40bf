"""Helpers shared by the benchmarks that run tether beside TRL (bench_sft.py, bench_rm.py, bench_dpo.py,
bench_online.py, bench_rollout.py, bench_rm_hh.py) and by run_all.py and table.py.

Only the standard library is imported at module level; tether and torch are imported inside the
functions that need them, so a worker process pays for what it uses.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / ".peer"
PEER_PYTHON = PEER / "bin" / "python"
# TRL dropped PPO after 1.9 (trl.experimental.ppo.PPOTrainer is gone from later releases): a second peer venv.
PEER19 = ROOT / ".peer19"
PEER19_PYTHON = PEER19 / "bin" / "python"
PEER19_TRL = "trl==1.9.0"
RESULTS = ROOT / "benchmarks" / "results"
# --size -> tether preset, the same two sizes in every benchmark (bench_sft.py adds "demo").
SIZES = {"5m": "small", "30m": "bench-30m"}
EXTRA_PRESETS = {
    # ~34M parameters with the world's 2k vocabulary (tied embeddings). Not a tether preset: added to PRESETS in
    # the benchmark's processes only (register_presets).
    "bench-30m": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
                  "intermediate_size": 2048, "max_position_embeddings": 512, "tie_word_embeddings": True},
}
# Anthropic HH-RLHF (harmless-base test file, ../shared/data): the benchmarks' real data (--data hh).
HH_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
if not HH_DATA.is_file():  # a git worktree (/work/wt/<name>) sits one level further from /work/shared
    HH_DATA = ROOT.parent.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
THREADS_HELP = ("torch threads on both sides (0: torch's default, one per core). 1 by default: with one thread "
                "per core, any other busy process stalls every op (steps 5-10x slower at random), while "
                "single-threaded runs repeat within a few percent")


def sh(cmd: list, **kw) -> subprocess.CompletedProcess:
    """Run `cmd`, echo it, and on failure show the tail of its output before exiting."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-6000:])
        sys.exit(f"failed ({proc.returncode}): {' '.join(str(c) for c in cmd)}")
    return proc


def ensure_peer(venv: Path = PEER, trl: str = "trl", probe: str = "import trl, datasets, accelerate, transformers") -> None:
    """Create `venv` with `trl` (a pip requirement) if it is missing or `probe` fails in it; torch first, from the
    local CPU wheel (an unpinned torch would pull a multi-GB CUDA build)."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", probe], check=False, capture_output=True).returncode == 0:
        return
    print(f"peer venv {venv} missing or incomplete; creating it")
    if not python.exists():
        sh(["python3", "-m", "venv", venv])
    sh([venv / "bin" / "pip", "install", "torch==2.13.0"])
    sh([venv / "bin" / "pip", "install", trl, "transformers", "datasets", "accelerate"])


def ensure_peer19() -> None:
    """Create `.peer19` with TRL 1.9.0, the last TRL with PPO (`trl.experimental.ppo.PPOTrainer`); it runs with the
    newest transformers (5.24 when this was written), so transformers is left unpinned."""
    ensure_peer(PEER19, PEER19_TRL, "import trl, datasets, accelerate, transformers; "
                                    f"assert trl.__version__ == {PEER19_TRL.split('==')[1]!r}; "
                                    "from trl.experimental.ppo import PPOTrainer")


def side_env(threads: int) -> dict[str, str]:
    """Environment of a timed side: offline, no tokenizer threads, `threads` torch threads (0: default)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_results_arg(parser) -> None:
    """The --results-dir option every benchmark shares (a quick check writes elsewhere, leaving real results be)."""
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help=f"folder for the result JSON (default {RESULTS.relative_to(ROOT)})")


def write_result(path: Path, result: dict) -> None:
    """Write a benchmark's result JSON with when it ran and which tether ran (table.py shows both)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {**result, "date": time.strftime("%Y-%m-%d %H:%M"), "tether_version": tether_version()}
    path.write_text(json.dumps(stamped, indent=1))
    print(f"\nwrote {path}")


def tether_version() -> str:
    """The git commit of the tether that ran (with "+dirty" when src/ differs from it), and where it was imported
    from (a PYTHONPATH snapshot of src/ runs instead of the working tree)."""
    import tether

    where = Path(tether.__file__).resolve().parent.parent
    git = ["git", "-C", str(where)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=False)
    commit = head.stdout.strip() if head.returncode == 0 else "unknown commit"
    return f"{commit}{'+dirty' if dirty.stdout.strip() else ''} ({where})"


# ---------------------------------------------------------------------------------------------
# Shared inputs


def corpus_texts(rows: list[dict]):
    for row in rows:
        if "text" in row:
            yield row["text"]
        else:
            yield from (m["content"] for m in row["messages"])


def register_presets() -> None:
    """Add EXTRA_PRESETS to tether's PRESETS, in this process only."""
    from tether.models import PRESETS

    for name, kwargs in EXTRA_PRESETS.items():
        PRESETS.setdefault(name, kwargs)


def world_model(folder: Path, preset: str, seed: int):
    """A fresh tether model of `preset` (a tether preset or one of EXTRA_PRESETS) with a BPE tokenizer trained on
    the tiny world's pretraining corpus, saved as a HF folder (weights + tokenizer with tether's chat template) in
    `folder`; returns the model."""
    from tether.models import build_model, save_pretrained
    from tether.tokenizer import train_tokenizer
    from tether.world.world import World, WorldConfig

    tokenizer = train_tokenizer(corpus_texts(World(WorldConfig()).pretraining_corpus()))
    register_presets()
    model = build_model(preset, tokenizer, seed=seed)
    save_pretrained(model, tokenizer, str(folder))
    return model


def matmul_peak(n: int = 2048, repeats: int = 8, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best fp32 FLOP/s of an n x n matmul (2 n^3 FLOPs) on this process's threads, timed by `clock`
    (time.process_time: the CPU time of the process, for rates measured on CPU time)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        a @ b
        best = min(best, clock() - t)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------
# Rounds and timings


def alternate(rounds: int, sides: tuple[str, str], run: Callable[[str], dict]) -> dict[str, list[dict]]:
    """`run(side)` `rounds` times per side, alternating which goes first, so that load from other
    processes on a shared machine hits both sides alike."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            runs[side].append(run(side))
    return runs


def timed_steps(steps: list[dict], warmup: int, key: str = "time") -> tuple[list[dict], list[float]]:
    """The step records after `warmup`, and each one's duration in seconds.

    `steps[i][key]` ("time": wall time; bench_online.py also records "cpu", the process's CPU time) is the clock
    at the end of optimizer step i + 1, from the start of training; a step's duration runs from the end of the
    step before (everything the trainer does between steps counts).
    """
    timed = steps[warmup:]
    starts = [steps[warmup - 1][key] if warmup else 0.0] + [s[key] for s in timed[:-1]]
    return timed, [s[key] - t for s, t in zip(timed, starts)]


def busy_note(loads: list[list[float]]) -> str | None:
    """A warning when the 1-minute load average exceeded the core count around any run."""
    worst = max(max(x) for x in loads)
    if worst > (os.cpu_count() or 1):
        return (f"machine busy: 1-min load average up to {worst:.1f} on {os.cpu_count()} cores during the runs; "
                "figures are noisy")
    return None


def run_side(side: str, folder: Path, threads: int, tether_cmd: list, peer_script: str, peer_args: list,
             fresh: tuple[str, ...] = ("tether-run", "trl-run"), peer_python: Path = PEER_PYTHON) -> dict:
    """One timed run of `side` in its own process: tether (`tether_cmd`, run with this Python) or the peer
    (`benchmarks/<peer_script>` run by `peer_python`, the .peer environment by default, given --out and
    `peer_args`); its result JSON with the load average around it. The `fresh` run folders are removed first (no
    cache carried between rounds)."""
    out = folder / f"{side}.json"
    for run_dir in fresh:
        shutil.rmtree(folder / run_dir, ignore_errors=True)
    before = os.getloadavg()[0]
    if side == "tether":
        sh([sys.executable, *tether_cmd, out], env=side_env(threads))
    else:
        sh([peer_python, ROOT / "benchmarks" / peer_script, "--out", out, *peer_args], env=side_env(threads))
    return {**json.loads(out.read_text()), "load": [before, os.getloadavg()[0]]}


def hh_pairs(model_folder: Path, n: int, max_length: int) -> list:
    """The first `n` HH-RLHF comparisons (HH_DATA: long multi-turn prompts, shared by chosen and rejected) whose
    chosen and rejected both fit `max_length` whole under the tokenizer in `model_folder`, so neither side cuts them."""
    from tether.chat import chat_format
    from tether.data.formats import load_comparisons
    from tether.models import load_tokenizer

    fmt = chat_format(load_tokenizer(str(model_folder)))
    comparisons = load_comparisons(HH_DATA, "hh", labelled=True)
    fits = [not (a.truncated or b.truncated or a.response_cut or b.response_cut) for a, b in
            fmt.encode_pairs([(c.prompt, c.chosen, c.rejected) for c in comparisons], max_length)]
    return [c for c, ok in zip(comparisons, fits) if ok][:n]

"""Measure what one more reward-model forward/backward pass costs, in tokens: the figure behind
`rm_batch.CHUNK_OVERHEAD_TOKENS` (where `length_chunks` cuts a batch, whether `prefix_saving` shares prompts).

    .venv/bin/python benchmarks/rm_pass_cost.py [--size 5m|30m] [--model FOLDER] [--repeats 5] [--threads 1]

1. A fresh Llama of `--size` (common.SIZES, with the tiny world's BPE tokenizer) in a temp folder, or `--model`,
   loaded as tether's RewardModel in train mode.
2. For each (rows B, tokens T) shape, all tokens real: forward, sum of rewards, backward; the median CPU time
   (time.process_time, so another busy process on the machine counts little) over `--repeats` after one warm-up,
   shapes interleaved.
3. Least squares (statistics.linear_regression): time = c + b x (B x T); c / b is the pass's cost in tokens.
   Where c comes from: each pass's backward writes a full weight gradient per layer and adds it into .grad, work
   in proportion to the parameters, as the per-token FLOPs are, so c / b stays about the same across model sizes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import SIZES, THREADS_HELP, world_model

SHAPES = [(1, 8), (2, 16), (4, 16), (4, 32), (8, 32), (8, 64)]


def pass_times(model, shapes: list[tuple[int, int]], repeats: int) -> dict[tuple[int, int], float]:
    """Median CPU seconds of one forward + backward of `model` per (B, T) shape (see the module docstring, step 2)."""
    import torch

    times: dict[tuple[int, int], list[float]] = {s: [] for s in shapes}
    for rep in range(repeats + 1):
        for rows, length in shapes:
            ids = torch.randint(3, model.classifier.config.vocab_size, (rows, length))
            start = time.process_time()
            model(ids, torch.ones_like(ids)).sum().backward()
            if rep:  # the first round warms up
                times[(rows, length)].append(time.process_time() - start)
            model.zero_grad(set_to_none=True)
    return {s: statistics.median(t) for s, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="5m", help="model size (ignored with --model)")
    p.add_argument("--model", type=Path, help="a saved model folder instead of a fresh --size Llama")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds over the shapes")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = p.parse_args()
    os.environ["TETHER_QUIET"] = "1"
    import torch

    from tether.reward import RewardModel

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="tether-rm-pass-"))
    try:
        path = args.model or folder / "model"
        if not args.model:
            world_model(path, SIZES[args.size], seed=0)
        model = RewardModel.from_backbone(str(path), max_length=max(t for _, t in SHAPES))
        model.train()
        times = pass_times(model, SHAPES, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    b, c = statistics.linear_regression([rows * length for rows, length in times], list(times.values()))
    for (rows, length), t in times.items():
        print(f"B={rows:<3} T={length:<3} {1e3 * t:8.1f} ms  (fit {1e3 * (c + b * rows * length):8.1f})")
    print(f"{args.model or args.size}: {1e3 * c:.1f} ms per pass, {1e6 * b:.0f} us per token: one more pass costs "
          f"{c / b:.0f} tokens (torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()

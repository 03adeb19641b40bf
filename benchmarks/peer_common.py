"""Helpers shared by the peer scripts, which run in the .peer environment and never import tether."""
from __future__ import annotations

import json
import resource
import time

import torch
import transformers
import trl
from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Wall time and this process's CPU time at train start and at the end of every optimizer step (after
    `optimizer.step()`). With one torch thread the CPU time is the time the side computed, which other processes on
    a shared machine do not stretch the way they stretch wall time."""

    def __init__(self):
        self.start, self.ends, self.cpu_start, self.cpu_ends = None, [], None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def write_result(path: str, result: dict, cfg) -> None:
    """Write a peer side's result JSON with what every side records: the optimizer, versions, torch threads and
    this process's peak RSS."""
    result = {**result, "optimizer": str(getattr(cfg.optim, "value", cfg.optim)),
              "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
              "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(path, "w") as f:
        json.dump(result, f)

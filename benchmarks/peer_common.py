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
    """Wall time at train start and at the end of every optimizer step (after `optimizer.step()`)."""

    def __init__(self):
        self.start, self.ends = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def write_result(path: str, result: dict, cfg) -> None:
    """Write a peer side's result JSON with what every side records: the optimizer, versions, torch threads and
    this process's peak RSS."""
    result = {**result, "optimizer": str(getattr(cfg.optim, "value", cfg.optim)),
              "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
              "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(path, "w") as f:
        json.dump(result, f)

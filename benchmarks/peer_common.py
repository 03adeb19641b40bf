"""Helpers shared by the peer scripts, which run in the .peer environment and never import tether."""
from __future__ import annotations

import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Wall time at train start and at the end of every optimizer step (after `optimizer.step()`)."""

    def __init__(self):
        self.start, self.ends = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

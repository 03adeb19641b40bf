"""Progress bars for long work (rich), with live figures such as the loss beside the bar."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self.progress, self.task = progress, task

    def update(self, advance: int = 1, **figures: float) -> None:
        if self.progress is None:
            return
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        self.progress.update(self.task, advance=advance, info=info)


LOG_EVERY_S = 15.0
"""Seconds between progress lines when stderr is not a terminal (a log file, a pipe, a job scheduler)."""


class _LogLines:
    """The bar's figures as a plain line at most every LOG_EVERY_S seconds and at the end: a redirected stderr gets
    no live bar (rich draws one only on a terminal, and prints it once, at the end)."""

    def __init__(self, description: str, total: int, completed: int):
        self.description, self.total, self.done = description, total, completed
        self.start = self.last = time.perf_counter()
        self.info = ""

    def update(self, advance: int = 1, **figures: float) -> None:
        self.done += advance
        self.info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        if time.perf_counter() - self.last >= LOG_EVERY_S:
            self.line()

    def line(self) -> None:
        self.last = time.perf_counter()
        console.print(f"{self.description} {self.done}/{self.total} {self.last - self.start:.0f}s {self.info}".rstrip(),
                      markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[_Bar]:
    """A bar on stderr (plain lines every LOG_EVERY_S seconds when it is not a terminal); silent when TETHER_QUIET
    is set (tests) so logs stay readable, and on every torchrun rank but 0 (one bar per run, not one per process)."""
    quiet_transformers()
    if os.environ.get("TETHER_QUIET") or os.environ.get("RANK", "0") != "0":
        yield _Bar(None, None)
        return
    if not (console.is_terminal or console.is_jupyter):  # a notebook draws rich's bar as a widget
        lines = _LogLines(description, total, completed)
        yield lines
        lines.line()
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task)


def quiet_transformers() -> None:
    """tether draws its own bars; transformers' per-file bars (weights loading, shard writing) only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class StageTimer:
    """Runs the stages of a loop (the demo, an iterate round): a heading each, its time in `timings`, and on
    resume a stage whose `done` file exists is skipped (returns None)."""

    def __init__(self, resume: bool, out: Console | None = None):
        self.resume, self.timings, self.console = resume, {}, out or console

    def __call__(self, name: str, fn, *args, done: Path | None = None):
        if self.resume and done is not None and done.exists():
            self.console.print(f"[dim]{name}: already done ({done}), skipped[/dim]")
            return None
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        result = fn(*args)
        self.timings[name] = round(time.perf_counter() - start, 1)
        return result

"""Experiment tracking: each metrics.jsonl row also goes to the trackers named in a config's `report_to`.

`MetricsLog` (tether.training) hands every row it writes to `Trackers.log`, so every training stage reports the
same names at the same steps as its metrics.jsonl, from rank 0 only. Each tracker writes under the run folder:

    tensorboard  out/tensorboard/   event files (torch.utils.tensorboard); the config as hparams
    mlflow       out/mlruns/        a SQLite store, mlflow.db (MlflowClient); the config as params
    wandb        out/wandb/         an offline run (`wandb sync` uploads it later); the config as its config
    trackio      out/trackio/       trackio's local database (TRACKIO_DIR, unless set); the config as its config

Resume: TensorBoard purges the points a killed process logged past the resumed step (SummaryWriter's
`purge_step`); the others start a new run named "<name>-resumed-<step>", so no run holds a step twice.
The libraries are imported when a run starts: tether itself needs none of them.
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tether.config import check
from tether.errors import ConfigError

Params = dict[str, bool | int | float | str | None]


class Run(Protocol):
    """One tracker's run: started by its class, (metrics, step) logged, finished once."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, ok: bool) -> None: ...


@dataclass(frozen=True)
class Tracker:
    """A `report_to` name: the module that must import, its pip package, and how a run starts."""

    module: str
    """Looked up (without importing it) to tell whether the library is installed."""
    package: str
    """What `pip install` needs."""
    start: Callable[[Path, str, Params, int], Run]
    """(run folder, run name, flat config, resumed step) -> a started Run."""


def numeric(row: dict) -> dict[str, float]:
    """The row's numbers as floats (booleans as 0/1), without "step" (the x axis): None, strings and lists are left
    out."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}


def flat_params(cfg, prefix: str = "") -> Params:
    """A config dataclass as {dotted name: scalar}: nested groups as "lora.r", lists comma-joined as in an
    override (`report_to=tensorboard,mlflow`)."""
    out: Params = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flat_params(value, f"{prefix}{f.name}."))
        elif isinstance(value, (list, tuple)):
            out[prefix + f.name] = ",".join(map(str, value))
        else:
            out[prefix + f.name] = value
    return out


# ---------------------------------------------------------------------------------------------
# The trackers, each through its library's own API


class TensorBoardRun:
    """out/tensorboard: scalars per metric name, the config as hparams (the HParams dashboard)."""

    def __init__(self, run_dir: Path, name: str, params: Params, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: TensorBoard hides what a killed process logged at or after it, so a resumed run's steps
        # replace those points instead of doubling them.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        # In the run's own event file (SummaryWriter.add_hparams would open a sub-run folder for them).
        for summary in hparams({k: v for k, v in params.items() if v is not None}, {}):
            self.writer.file_writer.add_summary(summary)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # rows are rare (log_every): keep the event file whole if the process dies

    def finish(self, ok: bool) -> None:
        self.writer.close()


class MLflowRun:
    """out/mlruns/mlflow.db, experiment "tether": one MLflow run per process, the config as params. A SQLite
    store because MLflow 3 refuses the plain-file store by default; browse it with
    `mlflow ui --backend-store-uri sqlite:///OUT/mlruns/mlflow.db`."""

    BATCH = 100  # MLflow's limit on params per log_batch

    def __init__(self, run_dir: Path, name: str, params: Params, resume_step: int):
        from mlflow.tracking import MlflowClient

        root = (run_dir / "mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        found = self.client.get_experiment_by_name("tether")
        experiment = found.experiment_id if found else self.client.create_experiment(
            "tether", artifact_location=(root / "artifacts").as_uri())
        if resume_step:  # the killed process's run never finished: say so
            for old in self.client.search_runs([experiment], "attributes.status = 'RUNNING'"):
                self.client.set_terminated(old.info.run_id, "KILLED")
        tags = {"tether.resumed_from_step": str(resume_step)} if resume_step else {}
        self.run_id = self.client.create_run(experiment, run_name=name, tags=tags).info.run_id
        from mlflow.entities import Param
        items = [Param(k, "null" if v is None else str(v)) for k, v in params.items()]
        for i in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + self.BATCH])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbRun:
    """out/wandb/offline-run-*: always offline, never the network; `wandb sync` uploads a run later."""

    def __init__(self, run_dir: Path, name: str, params: Params, resume_step: int):
        import wandb

        os.environ["WANDB_MODE"] = "offline"  # also for anything wandb starts (its service process)
        self.run = wandb.init(project="tether", name=name, dir=str(run_dir), mode="offline", config=params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class TrackioRun:
    """trackio's local database, project "tether", in out/trackio (TRACKIO_DIR) unless TRACKIO_DIR is set. trackio
    reads TRACKIO_DIR once, when first imported: later stages of the same process write where the first did."""

    def __init__(self, run_dir: Path, name: str, params: Params, resume_step: int):
        os.environ.setdefault("TRACKIO_DIR", str((run_dir / "trackio").resolve()))
        import trackio

        self.run = trackio.init(project="tether", name=name, config=params, resume="never")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, ok: bool) -> None:
        self.run.finish()


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("tensorboard", "tensorboard", TensorBoardRun),
    "mlflow": Tracker("mlflow", "mlflow", MLflowRun),
    "wandb": Tracker("wandb", "wandb", WandbRun),
    "trackio": Tracker("trackio", "trackio", TrackioRun),
}


# ---------------------------------------------------------------------------------------------
# Validation and the runs of one MetricsLog


def _missing(name: str) -> str:
    package = TRACKERS[name].package
    return f"{name!r} needs the {package} package: pip install {package}"


def check_report_to(names: list[str]) -> None:
    """ConfigError naming `report_to` for an unknown, repeated or uninstalled tracker (nothing is imported)."""
    for name in names:
        check(name in TRACKERS, "report_to", f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        check(importlib.util.find_spec(TRACKERS[name].module) is not None, "report_to", _missing(name))
    check(len(set(names)) == len(names), "report_to", f"names a tracker twice: {', '.join(names)}")


class Trackers:
    """The started runs of one metrics log: `log(row)` each row, `finish()` at the end of training. A stage stopped
    by an error leaves them open: `finish_open` closes them, at exit at the latest."""

    def __init__(self):
        self.runs: list[Run] = []

    def add(self, run: Run) -> None:
        if not self.runs:
            _OPEN.append(self)
            atexit.unregister(_at_exit)  # registered again, so it runs before the hooks of the libraries it uses
            atexit.register(_at_exit)
        self.runs.append(run)

    def log(self, row: dict) -> None:
        if self.runs:
            metrics = numeric(row)
            for run in self.runs:
                run.log(metrics, int(row["step"]))

    def finish(self, ok: bool = True) -> None:
        runs, self.runs = self.runs, []
        if self in _OPEN:
            _OPEN.remove(self)
        for run in runs:
            run.finish(ok)


_OPEN: list[Trackers] = []  # started and not finished


def finish_open(ok: bool = False) -> None:
    """Finish every run that no `finish()` closed (an error stopped its stage), marked failed where the tracker keeps
    a status; for a process that goes on after such an error (a notebook, a test)."""
    while _OPEN:
        _OPEN[-1].finish(ok)


def _at_exit() -> None:
    """`finish_open` at exit. Errors are dropped: the process is ending, and what stopped it was already reported."""
    for trackers in list(_OPEN):
        try:
            trackers.finish(ok=False)
        except Exception:  # noqa: BLE001
            pass


def start(cfg, run_dir: Path, resume_step: int) -> Trackers:
    """Start a run in each tracker of cfg.report_to (rank 0 only: the caller decides), named cfg.run_name or the run
    folder's name, with cfg's fields as params. A library that fails to import raises the `report_to` error."""
    name = cfg.run_name or Path(run_dir).resolve().name
    name = f"{name}-resumed-{resume_step}" if resume_step else name
    params, trackers = flat_params(cfg), Trackers()
    try:
        for tracker in cfg.report_to:
            try:  # each run imports its library itself (trackio must see TRACKIO_DIR first)
                run = TRACKERS[tracker].start(Path(run_dir), name, params, resume_step)
            except ImportError as err:
                raise ConfigError(f"report_to: {_missing(tracker)} ({err})") from None
            trackers.add(run)
    except BaseException:
        trackers.finish(ok=False)  # the runs already started
        raise
    return trackers

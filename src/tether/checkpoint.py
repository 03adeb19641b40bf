"""Checkpoints: a Hugging Face model folder plus the trainer state needed to resume step for step.

A checkpoint `step-000120/` holds the model (safetensors), tokenizer and config, loadable by plain
`transformers`, and `trainer_state.pt` (optimizer, RNG states, step, stage-specific counters) loaded
with `weights_only=True`. It is written to a temporary folder, fsynced, renamed into place, and only
then marked complete, so a job killed mid-write never leaves a checkpoint that resume would pick.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.pt"


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))


def _as_tuple(x):
    # torch.save keeps tuples, but a state that went through lists must be a tuple for random.setstate.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step-NNNNNN` atomically; keep the newest `keep` complete ones."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    _fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    with (final / COMPLETE).open("w") as f:  # the marker goes last: its presence means the rest is whole
        f.write(str(step))
        f.flush()
        os.fsync(f.fileno())
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)

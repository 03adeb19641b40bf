"""Checkpoints: a Hugging Face model folder plus the trainer state needed to resume step for step.

A checkpoint `step-000120/` holds the model (safetensors), tokenizer and config, loadable by plain
`transformers`, and `trainer_state.pt` (optimizer, RNG states, step, stage-specific counters) loaded
with `weights_only=True`. A LoRA run's checkpoint holds the adapter in peft's format instead of the model
(tether.lora.save_adapter_checkpoint): the base weights never change, resume reloads them from the run's input.

Atomic writes (issue 8, item 4). A checkpoint is written to `.tmp-step-000120/`, every file and folder in
it fsynced, renamed to `step-000120/` (and the parent folder fsynced, so the rename is durable), and only
then marked complete by a `COMPLETE` file, itself fsynced. Resume reads only marked folders, so a job
killed at any point (kill -9, power loss) leaves the previous checkpoint as the newest one resume picks.
Old checkpoints are pruned marker first, so a half-deleted folder is never taken for a complete one. The
next save removes what a killed save left behind (temporary folders, unmarked step folders). A save also
refuses NaN or inf tensors (tether.guard.check_finite) before touching the disk.
"""
from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tether.guard import check_finite
from tether.lora import has_adapters, save_adapter_checkpoint

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.pt"
TMP_PREFIX = ".tmp-"


def _fsync_path(path: Path) -> None:
    """fsync a file, or a folder (which makes the names in it durable: new files, a rename into it)."""
    if path.is_dir() and os.name != "posix":
        return  # only POSIX lets a folder be opened and fsynced
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then its folders deepest first and `folder` itself: data and names
    are both on disk before the rename publishes them."""
    paths = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for path in [p for p in paths if p.is_file()] + [p for p in paths if p.is_dir()] + [folder]:
        _fsync_path(path)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))


def _as_tuple(x):
    # torch.save keeps tuples, but a state that went through lists must be a tuple for random.setstate.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _step_of(folder: Path) -> int | None:
    """N of a `step-N` folder name; None for any other name."""
    digits = folder.name.removeprefix("step-")
    return int(digits) if folder.name.startswith("step-") and digits.isdigit() else None


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder, its marker first: a kill mid-delete leaves an unmarked folder, never a
    marked one with files missing."""
    marker = folder / COMPLETE
    if marker.exists():
        marker.unlink()
        _fsync_path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _clear_leftovers(root: Path) -> None:
    """Remove what killed saves left in `checkpoints/`: temporary folders and unmarked step folders. Only
    rank 0 writes checkpoints, so nothing else can be writing them."""
    for path in root.iterdir():
        if path.is_dir() and (path.name.startswith(TMP_PREFIX) or
                              (_step_of(path) is not None and not (path / COMPLETE).exists())):
            shutil.rmtree(path, ignore_errors=True)


def _write_marker(folder: Path, step: int) -> None:
    """The completion marker, written last: its presence means everything else in the folder is on disk."""
    with (folder / COMPLETE).open("w") as f:
        f.write(str(step))
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(folder)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write `run_dir/checkpoints/step-NNNNNN` atomically; keep the newest `keep` complete ones."""
    check_finite({"model": model.state_dict(), "trainer_state": state}, f"checkpoint step {step}")
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    root.mkdir(parents=True, exist_ok=True)
    # 1. Clear a killed save's leftovers; write and fsync the temporary folder.
    _clear_leftovers(root)
    tmp.mkdir()
    if has_adapters(model):  # LoRA: the adapter (and a reward head) only; the frozen base is the run's input
        save_adapter_checkpoint(model, tmp)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    _fsync_tree(tmp)
    # 2. Publish by rename (a same-step checkpoint from an earlier run is discarded marker first), then mark.
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    _fsync_path(root)
    _write_marker(final, step)
    # 3. Prune: the new checkpoint is complete before any old one goes.
    for old in complete_checkpoints(run_dir)[:-keep] if keep else []:  # keep=0: keep them all
        _discard(old)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step number)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if _step_of(p) is not None and (p / COMPLETE).exists()]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (what resume loads), or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)


def cached_tensors(cache: Path, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                   write: bool = True) -> tuple[dict, bool]:
    """(tensors, hit): the safetensors file `cache` when its metadata key equals `key`, else `compute()` saved
    there under `key` (unless `write` is False: under torchrun only rank 0 writes). Written to a temporary name and
    renamed, so a run killed mid-write leaves no cache that looks whole, and a rank reading it meanwhile sees the
    old file or the new one. Used for reference log-probs, computed once per dataset and reference (DPO, KTO)."""
    if cache.exists():
        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return {name: f.get_tensor(name) for name in f.keys()}, True
    tensors = {name: t.contiguous() for name, t in compute().items()}
    if not write:
        return tensors, False
    tmp = cache.with_name(cache.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"key": key})
    os.replace(tmp, cache)
    return tensors, False

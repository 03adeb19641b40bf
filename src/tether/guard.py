"""Non-finite guard: a NaN or inf loss or gradient never reaches the weights, and non-finite weights never
reach the disk (issue 8, item 4).

Two checks, one for each way a poisoned value could spread:
- `NonFiniteGuard.apply` sits between backward and `optimizer.step()` in every training loop (lm, rm, dpo,
  online). It clips the global gradient norm, and when that norm or the loss is NaN or inf it drops the
  update ("skip") or raises ("halt"). One NaN gradient would otherwise turn every weight NaN through
  AdamW's moments, and every later step and checkpoint with it.
- `check_finite` runs before every save (checkpoints, final models, reward models, critics): it refuses
  to write rather than produce a poisoned folder, so even a bug that slips past the first check cannot
  overwrite good weights on disk.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from tether.errors import NonFiniteError
from tether.optim import lr_with_scale

NONFINITE_POLICIES = ("skip", "halt")


def nonfinite_parts(loss: float, grad_norm: float) -> list[str]:
    """What was non-finite among a step's loss and global gradient norm, e.g. ["loss nan", "gradient norm inf"]."""
    named = (("loss", loss), ("gradient norm", grad_norm))
    return [f"{name} {value}" for name, value in named if not math.isfinite(value)]


def floating_tensors(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every floating-point tensor in nested dicts, lists and tuples (a state_dict,
    an optimizer state, a trainer state)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from floating_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def nonfinite_tensors(obj) -> list[str]:
    """Names of the floating tensors in `obj` (see floating_tensors) holding a NaN or an inf."""
    named = list(floating_tensors(obj))
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all().cpu() for _, t in named])  # (n,): one sync, not n
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


def check_finite(obj, what: str) -> None:
    """Raise NonFiniteError naming the tensors when any floating tensor in `obj` is NaN or inf; call it
    before writing anything, so a refused save leaves the disk as it was."""
    bad = nonfinite_tensors(obj)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"refusing to save {what}: NaN or inf in {shown}; nothing was written, and the "
                             "newest complete checkpoint is intact")


class NonFiniteGuard:
    """Applies optimizer updates, dropping or halting on a non-finite loss or gradient norm.

    One guard per run: it counts updates (to name the step in its errors) and consecutive skips. A training
    step is `updates_per_step` optimizer updates (1 for lm, rm and dpo; ppo_epochs x minibatches online).
    """

    def __init__(self, policy: str = "skip", max_skips: int = 10, start_step: int = 0, updates_per_step: int = 1):
        self.policy, self.max_skips, self.updates_per_step = policy, max_skips, updates_per_step
        self.updates = start_step * updates_per_step  # attempted so far, the resumed steps' included
        self.consecutive = 0  # updates skipped in a row; an applied update resets it

    @classmethod
    def from_config(cls, cfg, start_step: int = 0, updates_per_step: int = 1) -> NonFiniteGuard:
        """The guard of a stage config with `nonfinite` and `max_nonfinite_skips` fields."""
        return cls(cfg.nonfinite, cfg.max_nonfinite_skips, start_step, updates_per_step)

    def apply(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], clip: float, lr: float,
              loss: float) -> tuple[float, int]:
        """Clip the global gradient norm of `params` to `clip` (0: no clipping), then take the optimizer step at
        `lr` (times each parameter group's "lr_scale": `optim.lr_with_scale`) and zero the gradients. When `loss`
        or the norm is NaN or inf, zero the gradients without a step (AdamW's moments and step count stay as they
        were) and return skipped = 1, or raise NonFiniteError under policy "halt" or after `max_skips` consecutive
        skips. Returns (gradient norm before clipping, skipped)."""
        self.updates += 1
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params), clip or math.inf))
        bad = nonfinite_parts(loss, grad_norm)
        if bad:
            optimizer.zero_grad(set_to_none=True)  # poisoned gradients must not accumulate into the next step
            self.consecutive += 1
            self._maybe_halt(bad)
            return grad_norm, 1
        self.consecutive = 0
        lr_with_scale(optimizer, lr)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, 0

    def _where(self) -> str:
        step, update = divmod(self.updates - 1, self.updates_per_step)
        return f"step {step + 1}" + (f" (optimizer update {update + 1} of {self.updates_per_step})"
                                     if self.updates_per_step > 1 else "")

    def _maybe_halt(self, bad: list[str]) -> None:
        after = ("no optimizer step was taken, so the weights are those before this step and the newest complete "
                 "checkpoint is intact; lower lr, set grad_clip or check the data, then rerun with resume=true")
        if self.policy == "halt":
            raise NonFiniteError(f"{self._where()}: non-finite {' and '.join(bad)} (nonfinite=halt): {after}")
        if self.consecutive >= self.max_skips:
            raise NonFiniteError(f"{self._where()}: non-finite {' and '.join(bad)}, {self.consecutive} optimizer "
                                 f"updates in a row (max_nonfinite_skips={self.max_skips}): the run is diverging, "
                                 f"not meeting one bad batch; {after}")

"""LoRA adapters through `peft` (issue 8).

LoRA (Hu et al. 2021, arXiv:2106.09685, eq. 3): each adapted linear layer W (d_out, d_in) becomes

    h = W x + (α / r) B A x,        A (r, d_in) random, B (d_out, r) zero at the start,

so the adapted model starts equal to its base. Only A and B train (and a reward model's head: a sequence
classifier's `score`, which peft trains fully, or an encoder's head outside the backbone); W stays frozen, so AdamW
keeps moments for the adapters and the head only.

The reference model of DPO, KTO and online RL is the base: the same model run with its adapters disabled
(`AdaptersDisabled`, peft's `disable_adapter`), not a second copy in memory.

On disk:
- the final model (`tether.models.save_pretrained`): the adapters merged into the base, W + (α / r) B A, as a
  plain Hugging Face folder that loads without peft, and `adapter/` beside the weights (peft's
  adapter_config.json and adapter_model.safetensors) for reuse on the base. A merge makes one transient
  copy of the model.
- checkpoints (`save_adapter_checkpoint`): the adapter only (peft format) and, for a reward model, the
  weights outside the backbone (`outside_adapter.safetensors`: normalisation, an encoder's head; a classifier's
  `score` is in the adapter, as peft's modules_to_save); resume loads them onto
  the run's base model, which did not change.

peft is imported on first use: `import tether.lora` stays cheap for the stages that never adapt a model.
"""
from __future__ import annotations

import contextlib
import copy
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn

from tether.config import check
from tether.distributed import is_main
from tether.errors import ConfigError, TetherError

ALL_LINEAR = "all-linear"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OUTSIDE_FILE = "outside_adapter.safetensors"
ADAPTER_FOLDER = "adapter"


@dataclass
class LoraOptions:
    """LoRA adapters (peft) instead of full fine-tuning; r = 0, the default, trains every weight."""

    r: int = 0
    """Rank of the adapters; 0: LoRA off, every weight trains."""
    alpha: float = 16.0
    """α: the update is (α / r) B A (Hu et al. 2021 §4.1)."""
    dropout: float = 0.0
    """Dropout on each adapter's input in training mode; DPO, KTO and online RL run the policy in eval mode
    (no dropout anywhere), so there it has no effect."""
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])
    """Linear layers to adapt, by name suffix (e.g. q_proj, v_proj; a name that matches none is an error listing the
    model's), or all-linear: every linear layer except the output head."""

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self) -> None:
        check(self.r >= 0, "r", "must be >= 0 (0: LoRA off)")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        check(bool(self.target_modules) and all(self.target_modules), "target_modules",
              f"must name at least one module, or {ALL_LINEAR}")
        check(ALL_LINEAR not in self.target_modules or len(self.target_modules) == 1, "target_modules",
              f"{ALL_LINEAR} stands alone")


# ---------------------------------------------------------------------------------------------
# Adapting a model


def adapt(model: nn.Module, cfg) -> nn.Module:
    """A freshly loaded model (a causal LM or a `RewardModel`) with LoRA as cfg.lora asks (initialised from
    cfg.seed); use the returned model. Runs before `tether.distributed.prepare` (device, bf16, gradient
    checkpointing) and `wrap` (DDP), so they see the adapted model and DDP reduces the adapters' gradients only."""
    model = apply_lora(model, cfg.lora, cfg.seed)
    if cfg.lora.enabled and is_main():
        trainable, total = parameter_counts(model)
        Console(stderr=True).print(f"lora: r={cfg.lora.r} on {', '.join(cfg.lora.target_modules)}: {trainable:,} of "
                                   f"{total:,} parameters train ({100 * trainable / total:.1f}%)")
    return model


def apply_lora(model: nn.Module, opts: LoraOptions, seed: int = 0) -> nn.Module:
    """`model` with LoRA adapters, or `model` itself when opts.r == 0. A reward model keeps its head trainable
    and gets the adapters on its backbone. A's init runs under a forked RNG seeded by `seed`: the same seed gives
    the same adapters, and the caller's RNG stream is left untouched."""
    if not opts.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    inner = getattr(model, "backbone", model)
    # A causal LM, or a reward model's backbone: a sequence classifier, whose own head (score/classifier) peft's
    # SEQ_CLS keeps trainable and saved, or an encoder's body (no task; the head is outside it).
    classifier = type(inner).__name__.endswith("ForSequenceClassification")
    task = "CAUSAL_LM" if inner is model else ("SEQ_CLS" if classifier else None)
    targets = ALL_LINEAR if opts.target_modules == [ALL_LINEAR] else check_targets(inner, opts.target_modules)
    config = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=targets,
                        task_type=task)
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(seed)
        adapted = get_peft_model(inner, config)
    if inner is model:
        return adapted
    model.backbone = adapted
    return model


def _linear_modules(model: nn.Module) -> list[str]:
    """Full names of the layers LoRA adapts: torch's Linear and transformers' Conv1D (GPT-2's, W stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]


def linear_names(model: nn.Module) -> list[str]:
    """The leaf names of `model`'s linear layers in module order, each once: what `lora.target_modules` names
    (q_proj, k_proj, ..., or GPT-2's c_attn, c_proj, c_fc)."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in _linear_modules(model)))


def check_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """`targets` when each names at least one linear layer of `model` as peft matches them (the module's full name
    or a suffix after a dot); else a one-line ConfigError listing the ones that match none and the model's linear
    layers. peft would raise on none matching, without the names, and say nothing when only some match."""
    names = _linear_modules(model)
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        path = getattr(getattr(model, "config", None), "name_or_path", "")
        raise ConfigError(f"lora.target_modules: {', '.join(unmatched)} match{'es' if len(unmatched) == 1 else ''} "
                          f"no linear layer of {type(model).__name__}{f' ({path})' if path else ''}; its linear "
                          f"layers: {', '.join(linear_names(model))} (or {ALL_LINEAR}: every linear layer but the "
                          f"output head)")
    return list(targets)


@contextlib.contextmanager
def _quiet_peft():
    """peft's warnings that are not the user's doing: it reads transformers' `is_gradient_checkpointing`, which warns
    in transformers 5.x, and it announces the fan_in_fan_out it sets for GPT-2's Conv1D layers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # GPT-2's Conv1D stores W transposed; peft sets fan_in_fan_out for those layers itself, and says so.
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
        yield


def peft_model(model: nn.Module | None):
    """The `peft.PeftModel` in `model` (itself, or a reward model's backbone), or None without adapters."""
    if "peft" not in sys.modules:  # nothing was ever adapted in this process
        return None
    from peft import PeftModel

    for candidate in (model, getattr(model, "backbone", None)):
        if isinstance(candidate, PeftModel):
            return candidate
    return None


def has_adapters(model: nn.Module | None) -> bool:
    return peft_model(model) is not None


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a tied matrix counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------------
# The base model: the reference, and its weights


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under the plain model's names (as if no adapter was ever added): LoRA's A and B dropped,
    peft's `base_model.model.` prefix and `.base_layer` infix removed. A model without adapters: its state_dict."""
    peft = peft_model(model)
    if peft is None:
        return model.state_dict()
    plain = {}
    for name, tensor in peft.get_base_model().state_dict().items():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        plain[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    return plain


class AdaptersDisabled(nn.Module):
    """The base of a LoRA model: every call runs the model with its adapters disabled. A view, not a copy: it owns
    no parameters, and `eval()`/`requires_grad_()` on it leave the model alone (it is not registered as a child)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "adapted", model)  # a plain attribute: nn.Module would adopt it as a child

    @property
    def device(self) -> torch.device:
        return self.adapted.device

    @property
    def config(self):
        return self.adapted.config

    def forward(self, *args, **kwargs):
        with self.adapted.disable_adapter():
            return self.adapted(*args, **kwargs)

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The base weights under plain names: a reference cache keyed by them is shared with full fine-tuning."""
        return base_state_dict(self.adapted)


def adapters_disabled(model: nn.Module) -> nn.Module:
    """`model` as its base: an `AdaptersDisabled` view of a LoRA model, else `model` itself."""
    return AdaptersDisabled(model) if has_adapters(model) else model


def frozen_reference(model: nn.Module) -> nn.Module:
    """π_ref, the model as it is before training, frozen for the whole run: with LoRA the base (adapters disabled,
    no copy), which is the initial policy because B starts at zero; without LoRA a frozen deep copy."""
    if has_adapters(model):
        return AdaptersDisabled(model)
    return copy.deepcopy(model).requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Merging, checkpoints


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain model (no peft classes) with the adapters merged: W + (α / r) B A. Deep-copies first, so `model`
    keeps training with its adapters; the copy holds the full weights once more, for as long as it lives."""
    peft = peft_model(model)
    if peft is None or peft is not model:
        raise TetherError("merged_copy: expects a peft model (a reward model merges its backbone)")
    with _quiet_peft():
        return copy.deepcopy(peft).merge_and_unload()


def save_adapter(model: nn.Module, folder: str | Path) -> None:
    """peft's adapter folder (adapter_config.json, adapter_model.safetensors), loadable with
    `peft.PeftModel.from_pretrained(base, folder)`."""
    from peft import get_peft_model_state_dict

    peft = peft_model(model)
    if not get_peft_model_state_dict(peft):  # peft finds the adapters by module name: a renamed layer hides them
        raise TetherError("save_adapter: peft finds no adapter weights in the model (were its layers renamed?)")
    # save_embedding_layers=False: no embedding is trained, and "auto" may look the base up on the hub.
    peft.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)


def _outside(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state of `model` outside its peft part (a reward model's gain and bias, an encoder's head); {} for a peft
    model."""
    peft = peft_model(model)
    if peft is model:
        return {}
    prefix = next(name for name, child in model.named_children() if child is peft) + "."
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(prefix)}


def save_adapter_checkpoint(model: nn.Module, folder: str | Path) -> None:
    """What a LoRA run's checkpoint holds of the model: the adapter, and the weights outside it (reward model)."""
    save_adapter(model, folder)
    outside = _outside(model)
    if outside:
        save_file(outside, str(Path(folder) / OUTSIDE_FILE))


def refuse_adapter_checkpoint(folder: str | Path) -> None:
    """A run without LoRA cannot resume from a LoRA checkpoint (it holds the adapters, not the weights)."""
    if (Path(folder) / ADAPTER_WEIGHTS).is_file():
        raise TetherError(f"{folder}: holds LoRA adapters only (written by a run with lora.r > 0); resume with the "
                          f"run's lora settings")


def load_adapter_checkpoint(model: nn.Module, folder: str | Path) -> None:
    """Load a checkpoint written by `save_adapter_checkpoint` into `model` (the same base, adapted alike)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    folder, peft = Path(folder), peft_model(model)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise TetherError(f"{folder}: no {ADAPTER_WEIGHTS}; was the checkpoint written by a run with lora.r = 0?")
    saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    ours = peft.peft_config[peft.active_adapter]
    for key in ("r", "lora_alpha"):
        if saved.get(key) != getattr(ours, key):
            raise TetherError(f"{folder}: the checkpoint's adapters have {key}={saved.get(key)}, this run "
                              f"{getattr(ours, key)}; resume with the run's lora settings")
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    expected = get_peft_model_state_dict(peft).keys()
    if weights.keys() != expected:
        raise TetherError(f"{folder}: adapted layers differ from this run's (lora.target_modules?): "
                          f"{sorted(set(weights) ^ set(expected))[:4]}")
    set_peft_model_state_dict(peft, weights)
    outside = _outside(model)
    if outside:
        head = load_file(str(folder / OUTSIDE_FILE))
        if head.keys() != outside.keys():
            raise TetherError(f"{folder}: {OUTSIDE_FILE} holds {sorted(head)}, expected {sorted(outside)}")
        model.load_state_dict(head, strict=False)  # strict=False: the backbone's adapter was loaded above

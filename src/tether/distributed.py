"""Training on several processes and on a GPU: `torchrun --nproc_per_node N -m tether STAGE ...`.

One process per rank (per GPU, or N CPU processes). torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR; `setup` then joins the process group, NCCL on CUDA and gloo on the CPU. Without torchrun nothing
here does anything: no process group, no wrapper, the same single-process run as before.

The rules every training stage follows, so that W ranks train exactly like one process (issue 8, STYLE.md
practice 5: 2 ranks x accumulation A equal 1 rank x accumulation 2A):

1. Every rank builds the same seeded schedule, so every rank knows the whole optimizer batch. It cuts the
   batch into micro-batches exactly as one process would, and rank r trains on micro-batches r, r + W, ...
   (`shard`; the online stages hold blocks of rows instead: `block`, `local_rows`). The loss is normalised by a
   count over the WHOLE batch (tokens, pairs, rows), divided by W (`rank_count`, `normalised`), because DDP and
   FSDP2 average gradients over ranks: Σ_r (W · partial_r) / W = Σ_r partial_r.
2. Gradients are all-reduced after a rank's last micro-batch only (`accumulating`: `no_sync` before it).
   Every rank runs ceil(n / W) micro-batches, a short share padded with weight-0 repeats (`with_stand_in` where
   a rank's share may be empty): the all-reduce needs every rank, and under FSDP2 every forward and backward is a
   collective too.
3. Metrics are sums, all-reduced before they are divided (`all_reduce_sum`); whitening over the global batch
   takes the same reduction as a hook (`tether.math.advantages.masked_whiten(..., reduce=...)`).
4. Only rank 0 writes (`is_main`, `on_main`); every rank reads checkpoints on resume.

Strategies (`STRATEGIES`): "ddp" keeps a full copy per rank and all-reduces gradients (DistributedDataParallel);
"fsdp2" shards parameters, gradients and optimizer state over the ranks (`torch.distributed.fsdp.fully_shard`,
one group per decoder layer), which works with gloo on the CPU too (torch >= 2.6; checked on 2.13). LoRA
(`tether.lora`) is applied before `prepare` and `wrap`, and runs under "ddp" (only the adapters' gradients are
all-reduced); the stages refuse it with "fsdp2".
"""
from __future__ import annotations

import atexit
import copy
import functools
import inspect
import os
import types
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from weakref import WeakKeyDictionary

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn

from tether.config import check
from tether.tracking import check_report_to

T = TypeVar("T")


@dataclass
class DistributedConfig:
    """Where and how a training stage runs; every training stage's config has these fields."""

    strategy: Literal["ddp", "fsdp2"] = "ddp"
    """Under torchrun: "ddp" (a full model per rank, gradients all-reduced) or "fsdp2" (parameters, gradients and
    optimizer state sharded over the ranks, `fully_shard`; not for online RL). Ignored in a single process."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (cuda:LOCAL_RANK under torchrun), else the CPU."""
    bf16: bool = False
    """Run forward passes under bfloat16 autocast (weights, gradients and optimizer state stay fp32); CUDA only."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations during backward instead of keeping them: less memory, about a
    third more compute."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that also get every metrics.jsonl row, under the same names and steps, with this config
    as params (rank 0 only; tether.tracking): any of tensorboard (out/tensorboard/), mlflow (out/mlruns/mlflow.db),
    wandb (out/wandb/, always offline), trackio (out/trackio/); each needs its library installed. Empty: only
    metrics.jsonl."""
    run_name: str | None = None
    """The run's name in the trackers (null: the run folder's name); a resumed run adds "-resumed-STEP"."""

    def validate(self) -> None:
        check(not (self.bf16 and self.device == "cpu"), "bf16", "autocast is for CUDA; with device=cpu set bf16=false")
        check_report_to(self.report_to)


# ---------------------------------------------------------------------------------------------
# Process group and device


def launched() -> bool:
    """True when torchrun (or another launcher with the same variables) started this process."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def setup(cfg: DistributedConfig) -> torch.device:
    """Join the process group when launched by torchrun; return the device this rank trains on.

    Raises ConfigError for device=cuda without CUDA and for bf16 on the CPU (autocast to bf16 on the CPU is slow
    and is not what a GPU run would do, so it is refused rather than silently run).
    """
    cuda = torch.cuda.is_available()
    check(cfg.device != "cuda" or cuda, "device", "'cuda' but torch.cuda.is_available() is False")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and cuda)
    check(not cfg.bf16 or use_cuda, "bf16", "autocast is for CUDA and this run is on the CPU; set bf16=false")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        # Left at exit, not after the stage: a process group cannot be joined again reliably (gloo fails to reconnect
        # through torchrun's store), and a script may run several stages in the same processes.
        atexit.register(teardown)
    return device


def teardown() -> None:
    """Leave the process group (at exit; see `setup`)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """Leave the process group together, after the last stage of a script that ran them all cleanly: a barrier first,
    so that no rank tears its connections down while another still writes its last checkpoint. Not for `setup`'s
    exit handler: after a failure the other ranks may never reach the barrier."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, the only one that writes files. Read from torchrun's RANK before the process group exists, so a
    stage may ask before `setup`."""
    if not dist.is_initialized() and launched():
        return int(os.environ["RANK"]) == 0
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Model preparation: device, gradient checkpointing, bf16 autocast, the DDP / FSDP2 wrapper


def prepare(model: nn.Module, cfg: DistributedConfig, device: torch.device) -> nn.Module:
    """`model` on `device`, with gradient checkpointing and bf16 autocast when the config asks. Not wrapped."""
    if cfg.gradient_checkpointing:
        checkpoint_layers(model)
    if cfg.bf16:
        autocast_forward(model)
    return model.to(device)


def checkpoint_layers(model: nn.Module) -> None:
    """Activation checkpointing of every decoder layer (transformers' GradientCheckpointingLayer): the layer's
    `forward` becomes a checkpointed call of its class's forward (`_checkpointed_forward`).

    Not `model.gradient_checkpointing_enable()`: transformers only checkpoints in train mode, and DPO, KTO and online
    RL keep their policy in eval mode (no dropout). Not torch's `checkpoint_wrapper` either: a wrapper module adds
    `_checkpoint_wrapped_module` to the module names, and peft finds a LoRA model's adapter weights by module name, so
    it would save and load an empty adapter. An instance `forward` keeps every name (checkpoints stay plain HF
    folders); the module's hooks (FSDP2's all-gathers) stay outside the checkpoint, as with a wrapper applied before
    `fully_shard`; `copy.deepcopy` binds the copy's to the copy. Calling it twice changes nothing.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer) and "forward" not in vars(layer):
            layer.forward = types.MethodType(_checkpointed_forward, layer)


_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")  # its names across transformers


def _checkpointed_forward(layer: nn.Module, *args, **kwargs):
    """A decoder layer's forward, recomputed in backward; with gradients on it gets no KV cache, because the
    recompute would write the same keys into the cache a second time (transformers drops it for the same reason).
    Without gradients (sampling) the layer runs as is, cache included."""
    forward = type(layer).forward.__get__(layer)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    args, kwargs = _without_cache(layer, args, kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _without_cache(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """(args, kwargs) of a call of `layer` with its cache None and use_cache False, wherever the caller put them:
    GPT-2's model passes the cache positionally (`block(hidden_states, cache, causal_mask, ...)`), and a cache left
    in the call gets the keys appended twice, by the forward and by the recompute (a shape error in backward)."""
    bound = _forward_signature(type(layer)).bind(layer, *args, **kwargs)
    for name, value in list(bound.arguments.items()):
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            bound.arguments[name] = {k: _no_cache(k, v) for k, v in value.items()}
        else:
            bound.arguments[name] = _no_cache(name, value)
    return bound.args[1:], bound.kwargs


def _has_cache(layer: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether a call of `layer` passes a KV cache, wherever the caller put it (as `_without_cache`)."""
    bound = _forward_signature(type(layer)).bind(layer, *args, **kwargs)
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            if any(value.get(k) is not None for k in _CACHE_KWARGS):
                return True
        elif name in _CACHE_KWARGS and value is not None:
            return True
    return False


def _no_cache(name: str, value):
    return None if name in _CACHE_KWARGS else False if name == "use_cache" else value


@functools.lru_cache(maxsize=None)
def _forward_signature(cls: type) -> inspect.Signature:
    """The signature of a layer class's forward (through transformers' checkpointing wrapper, `functools.wraps`)."""
    return inspect.signature(cls.forward)


def autocast_forward(model: nn.Module) -> None:
    """Every forward of `model` (training, evaluation, sampling, through a wrapper or not) under bf16 autocast.

    Hooks rather than a replaced `forward` attribute: `copy.deepcopy` (the frozen reference) keeps hooks, while a
    copied bound `forward` would still call the original model. `always_call` closes the context on errors too.
    """
    stack: list = []

    def enter(module, args):
        stack.append(torch.autocast("cuda", dtype=torch.bfloat16))
        stack[-1].__enter__()

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    # torch.compile cannot trace a context entered in one hook and left in another: tether.rollout's compiled
    # decoding step reads this and runs `forward` under `with torch.autocast(...)` instead of the hooks.
    model._tether_autocast = torch.bfloat16


def compile_layers(model: nn.Module) -> int:
    """Regional compilation: every decoder layer (transformers' GradientCheckpointingLayer) through one
    torch.compile of its class's forward (inductor, dynamic shapes), as transformers' and PyTorch's
    regional-compilation recipes do: the layers share one compiled graph, so it compiles once whatever the depth,
    and inductor fuses what runs between the matmuls (norms, rotary embeddings, activations, residual adds).

    Only calls without a KV cache take the compiled path (`_compiled_forward`): a cache makes the graph read the
    layer's index (`cache.layers[layer_idx]`), which would compile one graph per layer and per pass kind and reach
    dynamo's recompile limit within a few layers (rm's and dpo's shared prompts run without one where the attention
    takes a custom mask, `tether.prefix_tree`; after a cache, eagerly, elsewhere). An instance
    `forward`, as `checkpoint_layers`: names, hooks and peft adapters stay as they are. Returns the number of
    layers compiled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and "forward" not in vars(m)]
    for layer in layers:
        layer.forward = types.MethodType(_compiled_forward, layer)
        layer._tether_compiled = True  # not checkpointing (models.is_checkpointing): caches and shared prompts stay
    return len(layers)


@functools.lru_cache(maxsize=None)
def _compiled_class_forward(cls: type) -> Callable:
    """One compiled forward per layer class, shared by its layers (and by every model of that class)."""
    return torch.compile(cls.forward, dynamic=True)


def _compiled_forward(layer: nn.Module, *args, **kwargs):
    """A decoder layer's forward: compiled without a KV cache, as it is with one (see `compile_layers`)."""
    if _has_cache(layer, args, kwargs):
        return type(layer).forward(layer, *args, **kwargs)
    return _compiled_class_forward(type(layer))(layer, *args, **kwargs)


def eager():
    """A context in which compiled layers run as plain modules: evaluations and sampling, whose no-grad, eval-mode
    and cached passes would each compile graphs of their own (tens of seconds on a CPU) for a few calls."""
    return torch.compiler.set_stance("force_eager")


def _ddp(model: nn.Module) -> nn.Module:
    # device_ids=None: inputs are already on the module's device. No buffer broadcast in forward: the only buffers
    # are constants (rotary frequencies, a reward model's gain and bias), and a broadcast in every forward would
    # make ranks that run different numbers of forwards wait on each other (torch 2.13 renamed the option).
    ddp = nn.parallel.DistributedDataParallel
    quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else {"broadcast_buffers": False}
    return ddp(model, device_ids=None, **quiet)


_SKELETONS: WeakKeyDictionary = WeakKeyDictionary()  # FSDP2 model -> its unsharded structure on the meta device


def _fsdp2(model: nn.Module) -> nn.Module:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        check(False, "strategy", f"fsdp2 needs torch >= 2.6 (torch.distributed.fsdp.fully_shard), this is "
                                 f"{torch.__version__}; use ddp")
    from transformers.modeling_layers import GradientCheckpointingLayer

    _SKELETONS[model] = _meta_copy(model)  # what `on_main` fills with the gathered weights to save them
    for layer in [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]:
        fully_shard(layer)  # one all-gather per decoder layer, so only one layer is ever whole at a time
    fully_shard(model)  # the rest: embeddings (tied to the LM head), final norm, heads
    return model


STRATEGIES: dict[str, Callable[[nn.Module], nn.Module]] = {"ddp": _ddp, "fsdp2": _fsdp2}
"""strategy -> wrap(model) -> the module the training forward goes through (DDP: a wrapper; FSDP2: the model
itself, its parameters sharded in place)."""


def wrap(model: nn.Module, strategy: str) -> nn.Module:
    """The module to run training forwards through: `model` itself in a single process."""
    return STRATEGIES[strategy](model) if dist.is_initialized() else model


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (anything else is returned as is)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def device_of(model: nn.Module) -> torch.device:
    """Where `model` computes: through a DDP wrapper, and for a module that owns no parameters but says its
    `device` (LoRA's base view, `tether.lora.AdaptersDisabled`)."""
    model = unwrap(model)
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def is_sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6 has no public FSDP2, so nothing is sharded by it
        return False
    return isinstance(model, FSDPModule)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers live on the meta device (no memory, no data copied)."""
    memo: dict = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


# ---------------------------------------------------------------------------------------------
# Sharding the work, accumulating, reducing


def shard(items: Sequence[T]) -> list[tuple[T, bool]]:
    """This rank's share of `items` (the step's micro-batches, as one process would cut them): items r, r + W, ...,
    each with True, then repeats of the first item with False up to ceil(n / W) in all: run those with weight 0.
    Every rank runs the same number of forwards and backwards, because each one is a collective under FSDP2
    (an all-gather of the weights) and the last one under DDP (the gradient all-reduce). One process: every item."""
    mine = [(item, True) for item in list(items)[rank()::world_size()]]
    return mine + [(items[0], False)] * (-(-len(items) // world_size()) - len(mine))


def block(n: int) -> range:
    """This rank's contiguous block of n rows (the online stages' samples): [r n / W, (r + 1) n / W)."""
    size = n // world_size()
    return range(rank() * size, (rank() + 1) * size)


def local_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Of global batch rows `rows` (e.g. a shuffled minibatch), the ones this rank holds as its `block` of n rows,
    as indices into that block, in order. One process holds them all."""
    first = rank() * n
    return rows[(rows >= first) & (rows < first + n)] - first


def with_stand_in(items: Sequence[T], stand_in: T) -> list[tuple[T, bool]]:
    """`items` each with True; when there are none, [(stand_in, False)]: a rank holding no rows of a batch still runs
    one forward and backward, with weight 0, because its last backward is the gradient all-reduce (as `shard`)."""
    return [(item, True) for item in items] or [(stand_in, False)]


def rank_count(count):
    """What each rank divides its summed loss by: the WHOLE batch's `count` over the ranks, whose gradients DDP and
    FSDP2 average (so the average is the gradient of the sum over all ranks / count)."""
    return count / world_size()


def normalised(total: torch.Tensor, count: float, real: bool = True) -> torch.Tensor:
    """The loss to backpropagate: `total` (summed over this rank's micro-batch) / `rank_count(count)`; 0 x total for
    a weight-0 micro-batch (see `shard`)."""
    return total / rank_count(count) if real else total * 0.0


def accumulating(net: nn.Module, last: bool):
    """Context for one micro-batch's forward and backward: gradients are synchronised across ranks only on the
    rank's `last` micro-batch (DDP's `no_sync`, FSDP2's `set_requires_gradient_sync`)."""
    if isinstance(net, nn.parallel.DistributedDataParallel) and not last:
        return net.no_sync()
    if dist.is_initialized() and is_sharded(net):
        net.set_requires_gradient_sync(last)
    return nullcontext()


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """The sums over ranks of a dict of numbers (metric sums), in one all-reduce; unchanged in one process."""
    if not dist.is_initialized():
        return values
    names = list(values)
    total = reduce_sum(torch.tensor([float(values[n]) for n in names], dtype=torch.float64))
    return {n: type(values[n])(x) if isinstance(values[n], int) else x for n, x in zip(names, total.tolist())}


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `t` over ranks (a new tensor; `t` itself in one process)."""
    if not dist.is_initialized():
        return t
    out = t.detach().clone().to(_comm_device())
    dist.all_reduce(out)
    return out.to(t.device)


def reducer() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`reduce_sum` for the `reduce` hooks of the math (whitening over the global batch); None in one process."""
    return reduce_sum if dist.is_initialized() else None


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors concatenated along dim 0 in rank order (same shape on every rank); `t` in one process."""
    if not dist.is_initialized():
        return t
    local = t.detach().to(_comm_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(t.device)


def gather_lists(items: list) -> list:
    """The ranks' Python lists concatenated in rank order (pickled); `items` in one process."""
    if not dist.is_initialized():
        return items
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a decision only rank 0 can take, e.g. the monitor's stop)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Saving and loading sharded models


def on_main(model: nn.Module, write: Callable[[nn.Module], T]) -> T | None:
    """`write(plain model)` on rank 0 only; None elsewhere. A DDP wrapper is unwrapped; an FSDP2 model's weights
    are first gathered (a collective: every rank must call this) into a plain copy on rank 0's CPU."""
    model = unwrap(model)
    if not (dist.is_initialized() and is_sharded(model)):
        return write(model) if is_main() else None
    state = full_state_dict(model)
    if not is_main():
        return None
    plain = copy.deepcopy(_SKELETONS[model])
    plain.load_state_dict(state, assign=True)
    if hasattr(plain, "tie_weights"):  # assign=True loads tied matrices as two tensors; make them one again
        plain.tie_weights()
    return write(plain)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer whole, on the CPU of rank 0 (empty elsewhere); a collective under FSDP2."""
    from torch.distributed.tensor import DTensor

    out, model = {}, unwrap(model)
    if is_sharded(model):
        _reshard(model)
    for name, t in model.state_dict().items():
        whole = t.full_tensor() if isinstance(t, DTensor) else t
        if is_main():
            out[name] = whole.detach().cpu()
    return out


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load full (unsharded) weights, as read from a checkpoint, on every rank; (missing, unexpected) as
    `load_state_dict(strict=False)` reports them."""
    model = unwrap(model)
    if dist.is_initialized() and is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        result = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return list(result.missing_keys), list(result.unexpected_keys)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    return list(missing), list(unexpected)


def _reshard(model: nn.Module) -> None:
    """Put back FSDP2's sharded parameters that a no-grad forward (an evaluation) left whole: FSDP2 keeps the root's
    parameters unsharded after a forward, waiting for a backward, and the state-dict helpers expect sharded ones."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state to checkpoint; under FSDP2 gathered whole (a collective: every rank calls it)."""
    model = unwrap(model)
    if dist.is_initialized() and is_sharded(model):
        _reshard(model)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what `optimizer_state` saved (every rank reads the same checkpoint)."""
    model = unwrap(model)
    if dist.is_initialized() and is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)

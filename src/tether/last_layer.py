"""The last decoder layer's feed-forward block only at the positions whose output is read.

In a causal LM the last decoder layer's output at a position feeds only the final norm and the head at that same
position: the keys and values every later query reads are computed inside its attention from its *input*. So when
only some positions' outputs are read (the counted tokens whose log-probs `tether.logprobs` computes, the token a
reward model scores), the last layer's position-wise work at the others is wasted. Its feed-forward block is most of
it (12 of a Llama layer's 16 d^2 multiply-adds per token at a 4x width): `read_rows_only` runs it on the read rows
alone and gives zeros at the others. The read positions' outputs and every gradient are those of the full pass
(tests/test_last_layer.py, tests/test_logprobs.py); the unread positions' final hidden states are not, and nothing
may read them. In SFT on short conversations about half the positions are prompt or padding: at 4 layers that is
about 9% of the model's matmuls skipped; in a reward model all but one position per sequence.

Nothing is skipped (the block yields False) where that is not known to be exact: a model type outside `PRUNABLE`
(an MLP taking more than the hidden states, a mixture of experts returning its router's logits, a multimodal body),
activation checkpointing (the backward reruns the layer after the block has ended), dropout active inside the block
(GPT-2 trains with 0.1: its mask drawn for the read rows only would be another draw than the full pass's, so runs
would no longer repeat across settings such as checkpointing), an `mlp` whose forward something else already
replaced, torch.distributed.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from tether.models import is_checkpointing

PRUNABLE = frozenset({"llama", "gpt2", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_neox",
                      "mistral"})
"""Model types whose last decoder layer has a position-wise `mlp` child called on the hidden states alone and runs
last in the body (tests/test_last_layer.py checks those in tests/archkit.py; OPT keeps fc1/fc2 on the layer)."""


def last_decoder_layer(body: nn.Module) -> nn.Module | None:
    """The last of `body`'s decoder layers (transformers' GradientCheckpointingLayer, in the order the body runs
    them), or None."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in body.modules() if isinstance(m, GradientCheckpointingLayer)]
    return layers[-1] if layers else None


def _draws_dropout(mlp: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in mlp.modules())


def _rows_forward(mlp: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The block's own forward on the read rows of (..., H) `hidden`, zeros at the others; an instance forward, so
    names, hooks and adapters stay (as `distributed.compile_layers`)."""
    flat = hidden.reshape(-1, hidden.size(-1))  # (B*T, H)
    read = type(mlp).forward(mlp, flat[mlp._tether_read_rows].unsqueeze(0))[0]  # (N, H)
    # the block's own dtype (bf16 under autocast, where the input stays fp32); index_copy would refuse a mix on CUDA
    out = flat.new_zeros(flat.size(0), read.size(-1), dtype=read.dtype).index_copy(0, mlp._tether_read_rows, read)
    return out.view(*hidden.shape[:-1], read.size(-1))


@contextmanager
def read_rows_only(model: nn.Module, body: nn.Module, rows: torch.Tensor):
    """Inside the block, `body`'s last decoder layer runs its feed-forward block only at `rows` (N,), distinct flat
    indices b * T + t into the (B, T) positions of `body`'s input (a repeated one would count its gradient twice);
    yields whether it does (see the module docstring). `model`: the causal LM or classifier around `body`, whose
    type and checkpointing decide."""
    layer = last_decoder_layer(body)
    mlp = getattr(layer, "mlp", None)
    config = getattr(model, "config", None)
    if mlp is not None and "_tether_read_rows" in vars(mlp):
        raise RuntimeError("read_rows_only entered again inside itself: the outer rows would apply to the inner pass")
    if (mlp is None or getattr(config, "model_type", None) not in PRUNABLE or "forward" in vars(mlp)
            or _draws_dropout(mlp) or is_checkpointing(model) or dist.is_initialized()):
        yield False
        return
    torch._dynamo.maybe_mark_dynamic(rows, 0)  # compiled layers: one graph whatever the count of read rows
    mlp._tether_read_rows = rows
    mlp.forward = types.MethodType(_rows_forward, mlp)
    try:
        yield True
    finally:
        del mlp.forward, mlp._tether_read_rows


def last_columns(batch: int, width: int, keep: int, device=None) -> torch.Tensor:
    """Flat indices b * width + t of the last `keep` columns of every row of a (batch, width) input: (batch * keep,)
    (the positions a forward with `logits_to_keep=keep` reads)."""
    columns = torch.arange(width - keep, width, device=device)  # (keep,)
    return (torch.arange(batch, device=device)[:, None] * width + columns).reshape(-1)

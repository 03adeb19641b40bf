"""Batched sampling of chat responses from any Hugging Face causal LM.

Prompts are formatted by the model's chat format (tether.chat: its template's generation prompt, or plain text),
left-padded (generation appends on the right) and sorted by length so that each batch wastes little padding.
Decoding is Hugging Face `generate` with its KV cache, stopping at the format's end-of-turn token or eos.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tether.chat import ChatFormat
from tether.models import check_positions
from tether.progress import progress_bar


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), rows aligned to the right."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    return ids, mask


def _sampling(temperature: float, top_p: float) -> dict:
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}


@dataclass
class Generated:
    """One sampled response."""

    text: str
    """The response decoded up to (not including) its stop token, special tokens skipped, whitespace stripped."""
    tokens: int
    """Tokens generated, the stop token included (max_new_tokens when the response did not end)."""
    ended: bool
    """It stopped on one of the format's stop tokens (`ChatFormat.stop_ids`), not at max_new_tokens."""


def cut_at_stop(row: list[int], stop_ids: Sequence[int]) -> tuple[list[int], int, bool]:
    """(the response's tokens before its first stop token, tokens generated with that stop token, ended) of one row
    of generated ids; after a stop, `generate` pads the row (with eos, when eos is the pad token)."""
    stops = set(stop_ids)
    end = next((t for t, token in enumerate(row) if token in stops), None)
    return (row, len(row), False) if end is None else (row[:end], end + 1, True)


@torch.no_grad()
def generate_records(model, fmt: ChatFormat, prompts: Sequence[str | list], max_new_tokens: int, temperature: float,
                     batch_size: int, seed: int, label: str = "generate", top_p: float = 1.0,
                     max_prompt_length: int | None = None, field: str = "max_new_tokens") -> list[Generated]:
    """One response per prompt, in the order given, with its token count and whether it ended; a prompt is a string
    (a user message, or plain text without a template) or a list of messages, cut to max_prompt_length tokens
    (keeping the end, tether.chat).

    temperature 0 is greedy decoding; otherwise sampling at `temperature` with nucleus `top_p`. `field` is the
    caller's name for max_new_tokens, for the error when prompt + response do not fit the model's positions.
    """
    model.eval()
    torch.manual_seed(seed)
    tokenizer = fmt.tokenizer
    encoded = fmt.prompts_ids(list(prompts), max_prompt_length)
    check_positions(model, max_new_tokens, field, prompt=max(map(len, encoded), default=0))
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[Generated | None] = [None] * len(prompts)
    with progress_bar(label, total=len(prompts)) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = (t.to(model.device) for t in left_pad([encoded[i] for i in idx], fmt.pad_id))
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=list(fmt.stop_ids), pad_token_id=fmt.pad_id,
                                 **_sampling(temperature, top_p))
            rows = [cut_at_stop(row, fmt.stop_ids) for row in gen[:, ids.size(1):].tolist()]
            texts = tokenizer.batch_decode([kept for kept, _, _ in rows], skip_special_tokens=True)
            for i, text, (_, tokens, ended) in zip(idx, texts, rows):
                out[i] = Generated(text.strip(), tokens, ended)
            bar.update(len(idx))
    return out


def generate(model, fmt: ChatFormat, prompts: Sequence[str | list], max_new_tokens: int, temperature: float,
             batch_size: int, seed: int, label: str = "generate", top_p: float = 1.0,
             max_prompt_length: int | None = None, field: str = "max_new_tokens") -> list[str]:
    """The texts of `generate_records`: one response per prompt, in the order given."""
    return [g.text for g in generate_records(model, fmt, prompts, max_new_tokens, temperature, batch_size, seed,
                                             label, top_p, max_prompt_length, field)]

"""`tether pretrain`: causal-LM training of a model on a corpus of texts and chats, every token counted."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tether import distributed
from tether.chat import chat_format
from tether.config import check
from tether.data.corpus import read_corpus
from tether.models import (
    PRESETS,
    build_model,
    check_positions,
    count_parameters,
    load_policy,
    load_tokenizer,
)
from tether.stages.lm import train_lm
from tether.training import Example, TrainConfig
from tether.tokenizer import encode_text

console = Console(stderr=True)


@dataclass
class PretrainConfig(TrainConfig):
    """Causal-LM pretraining on a JSONL corpus of `{"text": ...}` and `{"messages": [...]}` rows."""

    corpus: str = "runs/world/corpus.jsonl"
    """JSONL corpus; chat rows are rendered with the chat template and trained on every token."""
    tokenizer: str = "runs/tokenizer"
    """Tokenizer folder (from `tether tokenizer`)."""
    preset: str = "demo"
    """Size of a new model (test, demo, small); ignored when `init` is set."""
    init: str | None = None
    """Continue pretraining an existing Hugging Face model folder instead of a new model."""
    out: str = "runs/pretrain"
    """Run folder: metrics.jsonl, config.yaml, checkpoints/, model/ (the final HF folder)."""
    epochs: float = 3.0
    """Passes over the training data (fractions allowed); ignored when max_steps is set."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.corpus), "corpus", "is required")
        check(self.init is not None or self.preset in PRESETS, "preset",
              f"unknown {self.preset!r}; allowed: {', '.join(PRESETS)}")
        check(self.init is not None or not self.lora.enabled, "lora.r",
              "LoRA adapts a trained model: set init, or keep lora.r=0 for a new model")


def encode_corpus(tokenizer, rows: list[dict], max_length: int) -> tuple[list[Example], int]:
    """Examples with every token counted, and how many rows were truncated."""
    chats = [r["messages"] for r in rows if "messages" in r]
    encoded = [(ids, False) for ids in (encode_text(tokenizer, r["text"]) for r in rows if "text" in r)]
    encoded += [(c.input_ids, False) for c in chat_format(tokenizer).encode_many([(chat, None) for chat in chats])]
    examples, truncated = [], 0
    for ids, was_cut in encoded:
        was_cut = was_cut or len(ids) > max_length
        truncated += was_cut
        ids = ids[:max_length]
        examples.append(Example(ids, [1] * len(ids)))
    return examples, truncated


def run(cfg: PretrainConfig) -> Path:
    rows = read_corpus(cfg.corpus)  # bad data fails before any model work
    tokenizer = load_tokenizer(cfg.tokenizer)
    examples, truncated = encode_corpus(tokenizer, rows, cfg.max_length)
    model = load_policy(cfg.init) if cfg.init else build_model(cfg.preset, tokenizer, seed=cfg.seed)
    check_positions(model, cfg.max_length, "max_length")
    n_tokens = sum(len(e.input_ids) for e in examples)
    report = {"rows": len(rows), "tokens": n_tokens, "truncated": truncated, "max_length": cfg.max_length,
              "parameters": count_parameters(model)}
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if distributed.is_main():  # under torchrun only rank 0 writes
        (Path(cfg.out) / "data_report.json").write_text(json.dumps(report, indent=1))
        console.print(f"pretrain: {len(rows)} rows, {n_tokens} tokens, {truncated} truncated to "
                      f"max_length={cfg.max_length}; model {report['parameters'] / 1e6:.2f}M parameters")
    return train_lm(cfg, model, tokenizer, examples, "pretrain")

"""A byte-level BPE tokenizer for the tiny assistant world, with tether's chat template.

The tokenizer carries `tether.chat_templates.TETHER` as its chat template, so plain `transformers` renders its chats
and tether formats them like any other model's (tether.chat): `<bos><|system|>You are terse.<|user|>Hi<|assistant|>
Hello<eos><|user|>...`, the role markers, `<bos>` and `<eos>` being special tokens.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tether.chat_templates import TETHER as CHAT_TEMPLATE
from tether.errors import ConfigError, DataError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT]  # ids 0..5, in this order


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 4096
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for `transformers`.

    Every byte is in the initial alphabet, so any string round-trips through encode/decode.
    `model_max_length` only silences HF's "sequence too long" warning; models clip to their own positions.
    """
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ConfigError(f"vocab_size: {vocab_size} is too small (need > {len(SPECIAL_TOKENS) + 256})")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        padding_side="left",  # batched generation appends on the right, so prompts are padded on the left
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # keep " ." and " 's" exactly as written
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def encode_text(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """A plain text document as bos + ids + eos (for pretraining-style data)."""
    return encode_texts(tok, [text])[0]


def encode_texts(tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """`encode_text` over many documents in one batched call; control tokens in the text stay text."""
    if not texts:
        return []
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    # The Rust tokenizer directly: half the time of `tok(...)`, which builds a BatchEncoding we discard.
    # `encode_special_tokens` is that backend's switch for `split_special_tokens`; restore it for others.
    backend = tok.backend_tokenizer
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        encoded = backend.encode_batch_fast(list(texts), add_special_tokens=False)
    finally:
        backend.encode_special_tokens = previous
    return [bos + e.ids + [tok.eos_token_id] for e in encoded]


@dataclass
class TokenizerConfig:
    """Train the byte-level BPE tokenizer on a JSONL corpus and save it as a Hugging Face folder."""

    corpus: str = ""
    """Path to a JSONL file; each row is {"text": ...} or {"messages": [{"role", "content"}, ...]}."""
    vocab_size: int = 2048
    """Vocabulary size including the 6 special tokens and the 256 byte tokens."""
    out: str = "runs/tokenizer"
    """Folder the tokenizer is saved to (`save_pretrained`)."""

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if not self.corpus:
            raise ConfigError("corpus: required (path to a JSONL file)")
        if not isinstance(self.vocab_size, int) or self.vocab_size <= len(SPECIAL_TOKENS) + 256:
            raise ConfigError(f"vocab_size: {self.vocab_size!r} must be an integer > {len(SPECIAL_TOKENS) + 256}")
        if not self.out:
            raise ConfigError("out: required (output folder)")


def iter_corpus_texts(path: str) -> Iterable[str]:
    """Yield training strings from a JSONL corpus: text rows as is, message rows as their contents."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if isinstance(row, dict) and isinstance(row.get("text"), str):
                yield row["text"]
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                for m in row["messages"]:
                    if isinstance(m, dict) and isinstance(m.get("content"), str):
                        yield m["content"]
            else:
                raise DataError(f"{path}:{lineno}: row: expected a 'text' string or a 'messages' list")


def run(cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Validate, train on the corpus, save to `cfg.out`, and return the tokenizer."""
    cfg.validate()
    if not os.path.isfile(cfg.corpus):
        raise ConfigError(f"corpus: file not found: {cfg.corpus}")
    tok = train_tokenizer(iter_corpus_texts(cfg.corpus), vocab_size=cfg.vocab_size)
    tok.save_pretrained(cfg.out)
    return tok

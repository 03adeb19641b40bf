"""A byte-level BPE tokenizer for the tiny assistant world, and fast chat encoding with a loss mask.

The chat format, written once as a Jinja template so that plain `transformers` reproduces it:

    <bos><|system|>You are terse.<|user|>Hi<|assistant|>Hello<eos><|user|>...

Role markers and `<bos>`/`<eos>` are special tokens, so the tokenizer splits the rendered text at them and
encodes each piece on its own. `encode_chat` relies on that: it concatenates per-segment encodings, with all
contents of a corpus tokenised in one batched Rust call, instead of rendering Jinja and mapping character
offsets back to tokens per example (about 3x slower on short chats). A test checks it against
`apply_chat_template(..., return_assistant_tokens_mask=True)`.

Message contents are encoded with `split_special_tokens=True`: a user who types "<|assistant|>" or "<eos>"
gets those characters as text, never a forged role marker or an early stop. The Jinja path does the same
with `apply_chat_template(..., sanitize_control_tokens=True)`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tether.errors import ConfigError, DataError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT]  # ids 0..5, in this order
ROLES = ("system", "user", "assistant")

# `{% generation %}` marks the spans HF returns as `assistant_masks`; `<eos>` sits inside it so the model
# is trained to stop. Unknown roles fail loudly rather than render as nothing.
CHAT_TEMPLATE = (
    "{{ '<bos>' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ m['content'] }}{{ '<eos>' }}{% endgeneration %}"
    "{% elif m['role'] == 'system' or m['role'] == 'user' %}"
    "{{ '<|' + m['role'] + '|>' }}{{ m['content'] }}"
    "{% else %}{{ raise_exception('unknown role: ' + m['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


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


@dataclass
class EncodedChat:
    """One tokenised conversation."""

    input_ids: list[int]
    """Token ids, length T (T <= max_length when a max_length was given)."""
    loss_mask: list[int]
    """Length T: 1 on assistant content tokens and the `<eos>` closing each assistant turn, else 0."""
    truncated: bool
    """True when the conversation was longer than max_length and its tail was cut."""


def _role_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the role markers, plus `<bos>`/`<eos>` under their own names."""
    names = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "bos": BOS, "eos": EOS}
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def _check_messages(messages: Sequence[dict]) -> None:
    """Raise DataError on an empty conversation, an unknown role or a non-string content."""
    if not messages:
        raise DataError("messages: empty conversation")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise DataError(f"messages[{i}].role: {m.get('role')!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"messages[{i}].content: expected a string, got {type(m.get('content')).__name__}")


def _encode_contents(tok: PreTrainedTokenizerFast, contents: list[str]) -> list[list[int]]:
    """Encode message contents in one batched call, control tokens as plain text."""
    if not contents:
        return []
    # The Rust tokenizer directly: half the time of `tok(...)`, which builds a BatchEncoding we discard.
    # `encode_special_tokens` is that backend's switch for `split_special_tokens`; restore it for others.
    backend = tok.backend_tokenizer
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [e.ids for e in backend.encode_batch_fast(contents, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


def _assemble(
    messages: Sequence[dict],
    content_ids: Sequence[list[int]],
    ids: dict[str, int],
    max_length: int | None,
    add_generation_prompt: bool,
    keep_end: bool = False,
) -> EncodedChat:
    """Join role markers and encoded contents into ids and mask, mirroring CHAT_TEMPLATE.

    Over `max_length`, the first max_length tokens are kept; with `keep_end`, `<bos>` and the last
    max_length - 1 tokens (the cut falls in the prompt, so the final reply stays whole).
    """
    input_ids, mask = [ids["bos"]], [0]
    for m, content in zip(messages, content_ids):
        input_ids.append(ids[m["role"]])
        mask.append(0)
        input_ids.extend(content)
        if m["role"] == "assistant":
            input_ids.append(ids["eos"])
            mask.extend([1] * (len(content) + 1))  # content and the closing <eos>
        else:
            mask.extend([0] * len(content))
    if add_generation_prompt:
        input_ids.append(ids["assistant"])
        mask.append(0)
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated and keep_end:
        tail = max_length - 1
        input_ids, mask = input_ids[:1] + input_ids[len(input_ids) - tail :], mask[:1] + mask[len(mask) - tail :]
    elif truncated:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return EncodedChat(input_ids=input_ids, loss_mask=mask, truncated=truncated)


def encode_chat(
    tok: PreTrainedTokenizerFast,
    messages: Sequence[dict],
    max_length: int | None = None,
    add_generation_prompt: bool = False,
    keep_end: bool = False,
) -> EncodedChat:
    """Tokenise one conversation (a list of {"role", "content"}) exactly as CHAT_TEMPLATE renders it.

    Truncation keeps the first `max_length` tokens, or with `keep_end` `<bos>` and the last ones, and
    sets `truncated`; callers count those.
    """
    _check_messages(messages)
    content_ids = _encode_contents(tok, [m["content"] for m in messages])
    return _assemble(messages, content_ids, _role_ids(tok), max_length, add_generation_prompt, keep_end)


def encode_chats(
    tok: PreTrainedTokenizerFast,
    conversations: Sequence[Sequence[dict]],
    max_length: int | None = None,
) -> list[EncodedChat]:
    """`encode_chat` over many conversations, tokenising every content in a single batched call."""
    for c in conversations:
        _check_messages(c)
    flat = _encode_contents(tok, [m["content"] for c in conversations for m in c])
    ids = _role_ids(tok)
    out, start = [], 0
    for c in conversations:
        out.append(_assemble(c, flat[start : start + len(c)], ids, max_length, False))
        start += len(c)
    return out


def encode_prompt(tok: PreTrainedTokenizerFast, messages: Sequence[dict]) -> list[int]:
    """The generation prompt for `messages`: the conversation followed by `<|assistant|>`."""
    return encode_chat(tok, messages, add_generation_prompt=True).input_ids


def encode_text(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """A plain text document as `<bos>` + ids + `<eos>` (for pretraining-style data)."""
    return [tok.bos_token_id, *_encode_contents(tok, [text])[0], tok.eos_token_id]


def encode_texts(tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """`encode_text` over many documents in one batched call."""
    return [[tok.bos_token_id, *ids, tok.eos_token_id] for ids in _encode_contents(tok, list(texts))]


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

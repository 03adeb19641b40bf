"""Tiny random-init models of real architectures and real tokenizer shapes, for the real-model tests.

Nothing comes from a hub: tokenizers are trained here with `tokenizers` on HH-RLHF text (the 300 rows shipped in
tests/data) and wrapped the way their model families ship them; models are
built from `transformers` configs at a width of 32.

Tokenizer shapes (`TOKENIZERS`):
- "base": GPT-2's shape. One special token `<|endoftext|>` that is bos, eos and unk; no pad token, no chat template.
- "chatml": Qwen2's shape. `<|endoftext|>` is the pad token, `<|im_start|>`/`<|im_end|>` are special, eos is
  `<|im_end|>`, no bos, no unk, the ChatML chat template.
- "llama3": Llama-3's shape. `<|begin_of_text|>` bos, `<|end_of_text|>` eos, header and `<|eot_id|>` tokens, no pad,
  Llama-3's chat template (bos written by the template, contents trimmed).
- "gemma": Gemma's shape, a SentencePiece-style (Metaspace) tokenizer: `<bos>` added by the tokenizer itself, `<eos>`,
  `<pad>`, `<start_of_turn>`/`<end_of_turn>`, a template that writes `{{ bos_token }}` and calls the assistant "model".
"""
from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

SAMPLE = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-300.jsonl.gz"
"""The first 300 HH-RLHF rows, shipped with the tests (tests/data/hh-rlhf-harmless-300.md)."""
_HH_FILE = Path("shared") / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
# The full file sits beside the checkout (/work/shared beside /work/main), or further up for a git worktree
# (/work/wt/<name>): the nearest folder above that holds it.
HH = next((p / _HH_FILE for p in Path(__file__).resolve().parents if (p / _HH_FILE).is_file()),
          Path(__file__).resolve().parents[2] / _HH_FILE)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<start_of_turn>model\n' }}{% endif %}"
)


def hh_rows(n: int = 300) -> list[dict]:
    """The first n HH-RLHF rows ({"chosen", "rejected"} dialogues): from the shipped sample up to 300, else from the
    full file in ../shared."""
    path = SAMPLE if n <= 300 else HH
    if not path.is_file():
        raise FileNotFoundError(f"{n} HH-RLHF rows need the full file {HH} (the tests ship 300: {SAMPLE})")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def _texts() -> list[str]:
    return [row[k] for row in hh_rows(300) for k in ("chosen", "rejected")]


def _byte_level(specials: list[str], vocab_size: int) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_texts(), trainer)
    return core


def _metaspace(specials: list[str], vocab_size: int) -> Tokenizer:
    core = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + alphabet, show_progress=False)
    core.train_from_iterator(_texts(), trainer)
    return core


def build_tokenizer(shape: str, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A fresh tokenizer of `shape` (see the module docstring)."""
    if shape == "base":
        core = _byte_level(["<|endoftext|>"], vocab_size)
        return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    if shape == "chatml":
        core = _byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size)
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                      clean_up_tokenization_spaces=False)
        tok.chat_template = CHATML
        return tok
    if shape == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        core = _byte_level(specials, vocab_size)
        tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>",
                                      eos_token="<|end_of_text|>", additional_special_tokens=specials[2:],
                                      clean_up_tokenization_spaces=False)
        tok.chat_template = LLAMA3
        return tok
    if shape == "gemma":
        specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
        core = _metaspace(specials, vocab_size)
        core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                            special_tokens=[("<bos>", core.token_to_id("<bos>"))])
        tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                      additional_special_tokens=specials[3:], clean_up_tokenization_spaces=False)
        tok.chat_template = GEMMA
        return tok
    raise ValueError(f"unknown tokenizer shape {shape!r}; one of {', '.join(TOKENIZERS)}")


TOKENIZERS = ("base", "chatml", "llama3", "gemma")


@lru_cache(maxsize=None)
def _saved_tokenizer(shape: str, root: str) -> str:
    path = os.path.join(root, f"tokenizer-{shape}")
    if not os.path.isdir(path):
        build_tokenizer(shape).save_pretrained(path)
    return path


def tokenizer(shape: str, root: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer of `shape`, trained once per `root` folder and loaded back as `AutoTokenizer` does."""
    return transformers.AutoTokenizer.from_pretrained(_saved_tokenizer(shape, str(root)))


# Width 32, 2 layers: each model is well under a million parameters. `untied` marks Qwen2 (its real checkpoints
# of 7B and up have separate input and output embeddings).
_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
ARCHITECTURES = {
    "llama": ("LlamaConfig", dict(_SMALL, num_key_value_heads=2, max_position_embeddings=256)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=2, n_positions=256)),
    "qwen2": ("Qwen2Config", dict(_SMALL, num_key_value_heads=1, max_position_embeddings=256,
                                  tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", dict(_SMALL, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                                    sliding_window=64)),
    "gemma3": ("Gemma3TextConfig", dict(_SMALL, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                                        sliding_window=64)),
    "phi3": ("Phi3Config", dict(_SMALL, num_key_value_heads=2, max_position_embeddings=256,
                                original_max_position_embeddings=256)),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                              word_embed_proj_dim=32, max_position_embeddings=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(_SMALL, max_position_embeddings=256)),
    "mistral": ("MistralConfig", dict(_SMALL, num_key_value_heads=1, max_position_embeddings=256,
                                      sliding_window=64)),  # its default, 4096, would never slide here
}


def build_model(arch: str, tok, seed: int = 0):
    """A random-init causal LM of `arch` whose vocabulary and special ids are those of `tok`."""
    config_name, kwargs = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float()


def save_model(arch: str, shape: str, root: str | os.PathLike, seed: int = 0) -> Path:
    """`root/<arch>-<shape>`: a model folder (safetensors, with its tokenizer) as a user would pass to `model=`."""
    path = Path(root) / f"{arch}-{shape}"
    if not (path / "config.json").is_file():
        tok = tokenizer(shape, root)
        model = build_model(arch, tok, seed)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path

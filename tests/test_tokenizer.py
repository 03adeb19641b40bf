"""tether.tokenizer: byte-level round trips, plain documents, the stage. Its chat template is tested in test_chat.py."""
import json

import pytest
from transformers import AutoTokenizer

from tether.errors import ConfigError, DataError
from tether.chat import chat_format
from tether.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    encode_text,
    encode_texts,
    run,
    train_tokenizer,
)

SENTENCES = [
    "The capital of France is Paris.",
    "What is 12 plus 30? It is 42.",
    "Hello! How can I help you today?",
    "I am not sure, but I think the answer is seven.",
    "Paris, Rome and Berlin are cities in Europe.",
    "Please answer briefly and politely.",
] * 10

SYSTEM = {"role": "system", "content": "You are a helpful, terse assistant."}
SINGLE = [{"role": "user", "content": "What is 12 plus 30?"}, {"role": "assistant", "content": "It is 42."}]
MULTI = [
    SYSTEM,
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": " How can I help you today? "},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SENTENCES, vocab_size=400)


def test_special_token_ids_are_fixed(tok):
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4, 5]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left"


@pytest.mark.parametrize(
    "text",
    ["The capital of France is Paris.", "héllo wörld ✓ 日本語 🙂", "  two leading, two trailing  ", "\ttab\nline\r\n", ""],
)
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_bpe_merges_common_words(tok):
    # A trained vocabulary must compress its own corpus below one token per byte.
    text = "The capital of France is Paris."
    assert len(tok(text, add_special_tokens=False)["input_ids"]) < len(text.encode()) // 2


def test_encode_text(tok):
    ids = encode_text(tok, "Paris <eos> Rome")
    assert ids[0] == 1 and ids[-1] == 2 and 2 not in ids[1:-1]
    assert tok.decode(ids[1:-1]) == "Paris <eos> Rome"
    docs = ["Paris <eos> Rome", "", "héllo ✓"]
    assert encode_texts(tok, docs) == [encode_text(tok, d) for d in docs]
    assert encode_texts(tok, [""]) == [[1, 2]]


def test_config_validate_names_field():
    with pytest.raises(ConfigError, match="corpus"):
        TokenizerConfig().validate()
    with pytest.raises(ConfigError, match="vocab_size"):
        TokenizerConfig(corpus="c.jsonl", vocab_size=100).validate()
    with pytest.raises(ConfigError, match="out"):
        TokenizerConfig(corpus="c.jsonl", out="").validate()
    TokenizerConfig(corpus="c.jsonl").validate()


def test_run_trains_and_saves(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"text": s} for s in SENTENCES] + [{"messages": MULTI}, {"messages": SINGLE}]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    tok = run(TokenizerConfig(corpus=str(corpus), vocab_size=400, out=str(out)))
    loaded = AutoTokenizer.from_pretrained(out)  # plain transformers, no tether code
    assert loaded.padding_side == "left" and loaded.chat_template == tok.chat_template
    assert loaded.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4, 5]
    assert chat_format(loaded).encode(MULTI) == chat_format(tok).encode(MULTI)


def test_run_reports_bad_rows(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "ok"}\n{"prompt": "no text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: row"):
        run(TokenizerConfig(corpus=str(corpus), out=str(tmp_path / "t")))
    with pytest.raises(ConfigError, match="corpus"):
        run(TokenizerConfig(corpus=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "t")))

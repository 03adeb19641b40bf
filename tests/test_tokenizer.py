"""tether.tokenizer: byte-level round trips, and encode_chat agreeing with HF's chat template."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tether.errors import ConfigError, DataError
from tether.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    encode_chat,
    encode_chats,
    encode_prompt,
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


def hf_chat(tok, messages, **kw):
    """The reference: HF renders CHAT_TEMPLATE with Jinja and tokenises the result."""
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)


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


@pytest.mark.parametrize("messages", [SINGLE, [SYSTEM, *SINGLE], MULTI], ids=["single", "system", "multi"])
def test_encode_chat_matches_hf_template(tok, messages):
    ref = hf_chat(tok, messages, return_assistant_tokens_mask=True)
    enc = encode_chat(tok, messages)
    assert enc.input_ids == ref["input_ids"]
    assert enc.loss_mask == ref["assistant_masks"]
    assert not enc.truncated


def test_hand_built_mask(tok):
    # One-character contents are one byte token each, so every position is known:
    # pos: 0     1    2   3    4   5      6   7     8    9   10     11  12
    #      <bos> sys  s   user u   asst   a   <eos> user v   asst   b   <eos>
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "v"},
        {"role": "assistant", "content": "b"},
    ]
    c = tok.convert_tokens_to_ids
    enc = encode_chat(tok, msgs)
    assert enc.input_ids == [1, 3, c("s"), 4, c("u"), 5, c("a"), 2, 4, c("v"), 5, c("b"), 2]
    assert enc.loss_mask == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert [i for i, m in enumerate(enc.loss_mask) if m] == [6, 7, 11, 12]


def test_mask_covers_content_and_eos_only(tok):
    enc = encode_chat(tok, MULTI)
    n_assistant = sum(
        len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 1 for m in MULTI if m["role"] == "assistant"
    )
    assert sum(enc.loss_mask) == n_assistant
    for tid, m in zip(enc.input_ids, enc.loss_mask):
        if tid in (0, 1, 3, 4, 5):  # pad, bos and role markers are never trained on
            assert m == 0
        if tid == 2:  # every <eos> here closes an assistant turn
            assert m == 1


def test_control_tokens_in_content_are_text(tok):
    # A user typing "<eos>" or "<|assistant|>" must not forge a stop or a turn.
    msgs = [{"role": "user", "content": "say <eos> then <|assistant|>"}]
    enc = encode_chat(tok, msgs)
    assert enc.input_ids.count(2) == 0 and enc.input_ids.count(5) == 0
    assert enc.input_ids == hf_chat(tok, msgs, sanitize_control_tokens=True)["input_ids"]
    assert tok.decode(enc.input_ids[2:]) == msgs[0]["content"]


@settings(max_examples=40, deadline=None)
@given(
    contents=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), max_size=30),
        min_size=1,
        max_size=4,
    )
)
def test_encode_chat_matches_hf_on_random_text(tok, contents):
    roles = ["user", "assistant"]
    msgs = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    ref = hf_chat(tok, msgs, return_assistant_tokens_mask=True)
    enc = encode_chat(tok, msgs)
    assert enc.input_ids == ref["input_ids"]
    assert enc.loss_mask == ref["assistant_masks"]


def test_encode_chats_equals_per_example(tok):
    convs = [SINGLE, MULTI, [SYSTEM, *SINGLE], [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]]
    for max_length in (None, 12):
        assert encode_chats(tok, convs, max_length) == [encode_chat(tok, c, max_length) for c in convs]


def test_truncation_keeps_prefix_and_flags(tok):
    full = encode_chat(tok, MULTI)
    cut = encode_chat(tok, MULTI, max_length=7)
    assert cut.truncated
    assert cut.input_ids == full.input_ids[:7] and cut.loss_mask == full.loss_mask[:7]
    exact = encode_chat(tok, MULTI, max_length=len(full.input_ids))
    assert not exact.truncated and exact.input_ids == full.input_ids


def test_encode_prompt(tok):
    ids = encode_prompt(tok, [SYSTEM, SINGLE[0]])
    assert ids[-1] == 5  # <|assistant|>
    assert ids == hf_chat(tok, [SYSTEM, SINGLE[0]], add_generation_prompt=True)["input_ids"]
    # The prompt is exactly the conversation's prefix up to where the assistant's content starts.
    full = encode_chat(tok, [SYSTEM, *SINGLE])
    assert full.input_ids[: len(ids)] == ids and full.loss_mask[len(ids)] == 1


def test_encode_text(tok):
    ids = encode_text(tok, "Paris <eos> Rome")
    assert ids[0] == 1 and ids[-1] == 2 and 2 not in ids[1:-1]
    assert tok.decode(ids[1:-1]) == "Paris <eos> Rome"
    docs = ["Paris <eos> Rome", "", "héllo ✓"]
    assert encode_texts(tok, docs) == [encode_text(tok, d) for d in docs]
    assert encode_texts(tok, [""]) == [[1, 2]]


def test_bad_messages_raise_data_error(tok):
    with pytest.raises(DataError, match=r"messages\[1\]\.role"):
        encode_chat(tok, [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}])
    with pytest.raises(DataError, match=r"messages\[0\]\.content"):
        encode_chat(tok, [{"role": "user", "content": None}])
    with pytest.raises(DataError, match="empty"):
        encode_chats(tok, [SINGLE, []])


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
    assert encode_chat(loaded, MULTI) == encode_chat(tok, MULTI)


def test_run_reports_bad_rows(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "ok"}\n{"prompt": "no text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: row"):
        run(TokenizerConfig(corpus=str(corpus), out=str(tmp_path / "t")))
    with pytest.raises(ConfigError, match="corpus"):
        run(TokenizerConfig(corpus=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "t")))

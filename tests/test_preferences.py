"""tether.data.preferences: the three formats, one exact message per kind of bad row, round trips, real HH-RLHF."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.data.preferences import (
    Comparison,
    from_trl_row,
    length_stats,
    pair_id,
    read_comparisons,
    read_hh,
    read_trl,
    to_hh_row,
    to_trl_row,
    truncation_report,
    validate_comparison,
    whitespace_words,
    write_comparisons,
    write_trl,
)
from tether.errors import DataError

CONV = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
GOOD = {"prompt": "2+2?", "response_a": "4", "response_b": "5"}


def _write(tmp_path, lines: list[str] | bytes, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _error(read, path: str) -> str:
    with pytest.raises(DataError) as info:
        read(path)
    return str(info.value)


def _labelled() -> list[Comparison]:
    return [
        Comparison("2+2?", "4", "5", choice="A", strength=1.0, rater="r1", guideline_version="g1",
                   source_a="sft", source_b="ppo-3", timestamp="2025-01-02T03:04:05Z", meta={"round": 2}),
        Comparison("Name a colour.", "blue", "seven", choice="B"),  # B: response_b is the chosen one
        Comparison("Say hi.", "hi", "hello", choice="tie"),
        Comparison("Say bye.", "bye", "ciao"),  # unlabelled queue item
    ]


# ----------------------------------------------------------------------------------------- tether JSONL


def test_tether_jsonl_round_trip_keeps_ties_unlabelled_and_provenance(tmp_path):
    comparisons = _labelled() + [Comparison(CONV, "Paris.", "Lyon.", choice="A")]
    path = tmp_path / "sub" / "prefs.jsonl"
    write_comparisons(path, comparisons)
    back = read_comparisons(path)
    assert back == comparisons
    assert [c.choice for c in back] == ["A", "B", "tie", None, "A"]  # the tie and the queue item survive
    assert back[1].chosen == "seven" and back[1].rejected == "blue"
    assert back[2].chosen is None and back[3].rejected is None
    assert json.loads(path.read_text().splitlines()[0])["meta"] == {"round": 2}


def test_reader_fills_defaults_and_skips_blank_lines(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD), "", "  ", json.dumps({**GOOD, "choice": "tie", "id": "mine"})])
    first, second = read_comparisons(path)
    assert first == Comparison("2+2?", "4", "5") and first.id == pair_id("2+2?", "4", "5")
    assert second.choice == "tie" and second.id == "mine"  # a given id is kept


def _bad_rows():
    """(line 2 of a file whose line 1 is good, the exact message after `path:2: `)."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    return [
        ("{", "<json>: not valid JSON (Expecting property name enclosed in double quotes, column 2)"),
        ("[1, 2]", "<row>: expected a JSON object, got an array"),
        (json.dumps({"response_a": "x", "response_b": "y"}), "prompt: missing"),
        (json.dumps({"prompt": "p", "response_b": "y"}), "response_a: missing"),
        (json.dumps({"prompt": "p", "response_a": "x"}), "response_b: missing"),
        (json.dumps({**GOOD, "stength": 1}), "stength: unknown field (allowed: prompt, response_a, response_b, "
         "choice, strength, rater, guideline_version, source_a, source_b, timestamp, id, meta)"),
        (json.dumps({**GOOD, "prompt": " \n"}), "prompt: empty or whitespace-only"),
        (json.dumps({**GOOD, "prompt": 3}), "prompt: expected a string or a list of messages, got a number"),
        (json.dumps({**GOOD, "prompt": []}), "prompt: empty list"),
        (json.dumps({**GOOD, "prompt": msgs}), "prompt[1].role: a prompt must end with a user message"),
        (json.dumps({**GOOD, "prompt": [{"role": "human", "content": "Hi"}]}),
         "prompt[0].role: unknown role 'human' (allowed: system, user, assistant)"),
        (json.dumps({**GOOD, "prompt": [{"role": "user"}]}), "prompt[0].content: missing"),
        (json.dumps({**GOOD, "response_a": ""}), "response_a: empty or whitespace-only"),
        (json.dumps({**GOOD, "response_b": "\t "}), "response_b: empty or whitespace-only"),
        (json.dumps({**GOOD, "response_b": ["5"]}), "response_b: expected a string, got an array"),
        (json.dumps({**GOOD, "response_b": "4"}), "response_b: identical to response_a"),
        (json.dumps({**GOOD, "response_b": " 4\n"}), "response_b: identical to response_a"),  # up to whitespace
        (json.dumps({**GOOD, "choice": "a"}), 'choice: expected "A", "B", "tie" or null, got "a"'),
        (json.dumps({**GOOD, "choice": 1}), 'choice: expected "A", "B", "tie" or null, got 1'),
        (json.dumps({**GOOD, "choice": "A", "strength": 0}), "strength: 0 is outside (0, 1]"),
        (json.dumps({**GOOD, "choice": "A", "strength": 1.5}), "strength: 1.5 is outside (0, 1]"),
        (json.dumps({**GOOD, "choice": "A", "strength": "high"}),
         "strength: expected a number in (0, 1] or null, got a string"),
        (json.dumps({**GOOD, "choice": "A", "strength": True}),
         "strength: expected a number in (0, 1] or null, got a boolean"),
        (json.dumps({**GOOD, "strength": 0.5}), "strength: given for an unlabelled comparison (choice is null)"),
        (json.dumps({**GOOD, "rater": 7}), "rater: expected a string or null, got a number"),
        (json.dumps({**GOOD, "meta": [1]}), "meta: expected an object, got an array"),
    ]


@pytest.mark.parametrize("line, message", _bad_rows())
def test_each_bad_row_is_reported_with_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path, [json.dumps(GOOD), line, "{"])  # line 3 is bad too: the first error wins
    assert _error(read_comparisons, path) == f"{path}:2: {message}"


def test_invalid_utf8_and_missing_file(tmp_path):
    path = _write(tmp_path, json.dumps(GOOD).encode() + b'\n{"prompt": "\xff"}\n')
    assert _error(read_comparisons, path) == f"{path}:2: <utf-8>: invalid UTF-8 at byte 13"
    missing = str(tmp_path / "nope.jsonl")
    assert _error(read_comparisons, missing) == f"{missing}: file not found"
    empty = _write(tmp_path, ["", " "], name="empty.jsonl")
    assert _error(read_comparisons, empty) == f"{empty}: no rows"


def test_writer_and_validate_apply_the_reader_rules(tmp_path):
    path = tmp_path / "out.jsonl"
    bad = Comparison("p", "same", "same", choice="A")
    with pytest.raises(DataError, match=rf"^{path}:2: response_b: identical to response_a$"):
        write_comparisons(path, [_labelled()[0], bad])
    assert not path.exists()  # nothing half-written
    with pytest.raises(DataError, match=r"^strength: 2 is outside \(0, 1\]$"):
        validate_comparison(Comparison("p", "a", "b", choice="A", strength=2))
    with pytest.raises(DataError, match=rf"^{path}:1: meta: not JSON-serialisable"):
        write_comparisons(path, [Comparison("p", "a", "b", meta={"x": object()})])


def test_pair_id_ignores_response_order_but_not_content():
    assert pair_id("p", "a", "b") == pair_id("p", "b", "a")
    assert Comparison("p", "a", "b").id == Comparison("p", "b", "a", choice="B").id
    assert pair_id("p", "a", "b") != pair_id("q", "a", "b") != pair_id("p", "a", "c")
    assert pair_id("p", "a", "b") != pair_id([{"role": "user", "content": "p"}], "a", "b")


@given(st.text(), st.text(), st.text())
def test_pair_id_is_symmetric(prompt, a, b):
    assert pair_id(prompt, a, b) == pair_id(prompt, b, a)


def test_module_does_not_import_torch():
    code = "import sys, tether.data.preferences; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------------ TRL


def test_trl_plain_export_skips_and_counts_ties_and_reads_back(tmp_path):
    path = tmp_path / "trl.jsonl"
    labelled = _labelled()[:3]  # A, B, tie
    assert write_trl(path, labelled) == (2, 1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                    {"prompt": "Name a colour.", "chosen": "seven", "rejected": "blue"}]
    back = read_trl(path)
    assert [(c.prompt, c.response_a, c.response_b, c.choice) for c in back] == [
        ("2+2?", "4", "5", "A"), ("Name a colour.", "seven", "blue", "A")]
    assert [c.id for c in back] == [c.id for c in labelled[:2]]  # the pair is the same pair after the swap


def test_trl_conversational_round_trip(tmp_path):
    c = Comparison(CONV, "Paris.", "Berlin.", choice="B")
    row = to_trl_row(c, conversational=True)
    assert row == {"prompt": CONV, "chosen": [{"role": "assistant", "content": "Berlin."}],
                   "rejected": [{"role": "assistant", "content": "Paris."}]}
    assert from_trl_row(row) == Comparison(CONV, "Berlin.", "Paris.", choice="A")
    path = tmp_path / "conv.jsonl"
    assert write_trl(path, [c, _labelled()[0]], conversational=True) == (2, 0)
    first, second = read_trl(path)
    assert (first.prompt, first.chosen, first.rejected) == (CONV, "Berlin.", "Paris.")
    assert second.prompt == [{"role": "user", "content": "2+2?"}]  # a string prompt wrapped as one user turn


def test_trl_writer_refuses_unlabelled_and_plain_conversations(tmp_path):
    path = tmp_path / "trl.jsonl"
    with pytest.raises(DataError) as info:
        write_trl(path, _labelled())  # the 4th is unlabelled
    assert str(info.value) == (f"{path}:4: choice: an unlabelled comparison (null) cannot be written as a TRL row, "
                               "which needs a chosen response")
    with pytest.raises(DataError) as info:
        write_trl(path, [Comparison(CONV, "a", "b", choice="A")])
    assert str(info.value) == (f"{path}:1: prompt: a conversation cannot be written as a plain TRL row "
                               "(use conversational=True)")
    with pytest.raises(DataError) as info:
        write_trl(path, [_labelled()[2]])
    assert str(info.value) == f"{path}: no labelled comparisons (1 ties skipped) to write"
    with pytest.raises(DataError, match="^choice: a tie cannot be written as a TRL row"):
        to_trl_row(_labelled()[2])


def _conv(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


@pytest.mark.parametrize("row, message", [
    ({"chosen": "a", "rejected": "b"},
     "prompt: missing (TRL's implicit-prompt rows, without 'prompt', are not supported)"),
    ({"prompt": "p", "rejected": "b"}, "chosen: missing"),
    ({"prompt": "p", "chosen": "a"}, "rejected: missing"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected: identical to chosen"),
    ({"prompt": "p", "chosen": " ", "rejected": "b"}, "chosen: empty or whitespace-only"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt: empty or whitespace-only"),
    ({"prompt": None, "chosen": "a", "rejected": "b"},
     "prompt: expected a string (plain) or a list of messages (conversational), got null"),
    ({"prompt": "p", "chosen": _conv("assistant", "a"), "rejected": "b"},
     "chosen: a list of messages in a plain row (its prompt is a string)"),
    ({"prompt": _conv("user", "p"), "chosen": "a", "rejected": _conv("assistant", "b")},
     "chosen: expected a list with one assistant message (the prompt is a list), got a string"),
    ({"prompt": _conv("user", "p"), "chosen": _conv("user", "a"), "rejected": _conv("assistant", "b")},
     "chosen[0].role: expected 'assistant', got 'user'"),
    ({"prompt": _conv("user", "p"), "chosen": _conv("assistant", "a") * 2, "rejected": _conv("assistant", "b")},
     "chosen: expected one assistant message, got 2"),
    ({"prompt": _conv("user", "p"), "chosen": _conv("assistant", "a"), "rejected": _conv("assistant", "")},
     "rejected[0].content: empty or whitespace-only"),
    ({"prompt": _conv("user", "p"), "chosen": _conv("assistant", "a"), "rejected": _conv("assistant", "a")},
     "rejected: identical to chosen"),
    ({"prompt": _conv("assistant", "p"), "chosen": _conv("assistant", "a"), "rejected": _conv("assistant", "b")},
     "prompt[0].role: a prompt must end with a user message"),
])
def test_each_bad_trl_row(tmp_path, row, message):
    path = _write(tmp_path, [json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}), json.dumps(row)])
    assert _error(read_trl, path) == f"{path}:2: {message}"  # row checks come before the mixed-kind check
    with pytest.raises(DataError) as info:
        from_trl_row(row)
    assert str(info.value) == message


def test_trl_mixed_plain_and_conversational_fails_at_the_first_differing_row(tmp_path):
    plain = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    conv = json.dumps({"prompt": _conv("user", "p"), "chosen": _conv("assistant", "a"),
                       "rejected": _conv("assistant", "b")})
    path = _write(tmp_path, ["", plain, plain, conv, plain])
    assert _error(read_trl, path) == (f"{path}:4: prompt: a conversational row in a file whose first row "
                                      "(line 2) is plain")
    path = _write(tmp_path, [conv, plain], name="b.jsonl")
    assert _error(read_trl, path) == (f"{path}:2: prompt: a plain row in a file whose first row "
                                      "(line 1) is conversational")


# -------------------------------------------------------------------------------------------------- HH-RLHF

HH_PROMPT = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: How do I boil an egg?"
HH_ROW = {"chosen": HH_PROMPT + "\n\nAssistant: Simmer it for 9 minutes.",
          "rejected": HH_PROMPT + "\n\nAssistant: I would rather not.\n\nAssistant: Fine: 9 minutes."}


def test_hh_row_becomes_a_conversation_prefix_and_two_replies(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(HH_ROW) + "\n").encode()))
    (c,) = read_hh(path)
    assert c.prompt == [{"role": "user", "content": "Hi there"},
                        {"role": "assistant", "content": "Hello! How can I help?"},
                        {"role": "user", "content": "How do I boil an egg?"}]
    assert c.response_a == "Simmer it for 9 minutes."
    assert c.response_b == "I would rather not.\n\nAssistant: Fine: 9 minutes."  # a model continuation stays
    assert (c.choice, c.source_a, c.source_b, c.meta) == ("A", "hh-rlhf", "hh-rlhf", {"source": "hh-rlhf", "line": 1})
    assert to_hh_row(c) == HH_ROW
    assert to_hh_row(Comparison("Hi", "a", "b", choice="B")) == {"chosen": "\n\nHuman: Hi\n\nAssistant: b",
                                                                 "rejected": "\n\nHuman: Hi\n\nAssistant: a"}


def test_round_trip_hh_tether_trl_conversational_hh(tmp_path):
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps(HH_ROW) + "\n")
    write_comparisons(tmp_path / "t.jsonl", read_hh(hh))
    assert write_trl(tmp_path / "trl.jsonl", read_comparisons(tmp_path / "t.jsonl"), conversational=True) == (1, 0)
    (back,) = read_trl(tmp_path / "trl.jsonl")
    assert to_hh_row(back) == HH_ROW


@pytest.mark.parametrize("row, message", [
    ({"rejected": "x"}, "chosen: missing"),
    ({"chosen": HH_ROW["chosen"], "rejected": 3}, "rejected: expected a string, got a number"),
    ({"chosen": "Human: hi\n\nAssistant: yo", "rejected": "x"}, "chosen: no '\\n\\nHuman:' turn"),
    ({"chosen": HH_PROMPT, "rejected": HH_ROW["rejected"]},
     "chosen: no '\\n\\nAssistant:' turn after the last '\\n\\nHuman:' turn"),
    ({"chosen": HH_ROW["chosen"], "rejected": "\n\nHuman: Hi there\n\nAssistant: Hey.\n\nHuman: How do I boil an egg?"
      "\n\nAssistant: No."}, "rejected: differs from chosen before the final assistant turn (no shared prompt)"),
    ({"chosen": HH_PROMPT + "\n\nAssistant: ", "rejected": HH_ROW["rejected"]}, "chosen: empty final assistant reply"),
    ({"chosen": HH_ROW["chosen"], "rejected": HH_PROMPT + "\n\nAssistant:"}, "rejected: empty final assistant reply"),
    ({"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"] + " "},
     "rejected: final assistant reply identical to chosen's"),
    ({"chosen": "Hi\n\nHuman: q\n\nAssistant: a", "rejected": "Hi\n\nHuman: q\n\nAssistant: b"},
     "chosen: text before the first '\\n\\nHuman:' turn"),
    ({"chosen": "\n\nHuman:  \n\nAssistant: a", "rejected": "\n\nHuman:  \n\nAssistant: b"},
     "chosen: turn 1 (Human:) is empty"),
])
def test_each_bad_hh_row_strict_and_lenient(tmp_path, row, message):
    path = _write(tmp_path, [json.dumps(HH_ROW), json.dumps(row), json.dumps(HH_ROW)])
    assert _error(read_hh, path) == f"{path}:2: {message}"
    comparisons, skipped = read_hh(path, strict=False)
    assert len(comparisons) == 2 and skipped == [(2, message)]
    assert [c.meta["line"] for c in comparisons] == [1, 3]


def test_to_hh_row_refuses_what_would_not_read_back():
    with pytest.raises(DataError, match=r"^prompt\[0\]\.role: HH-RLHF has no system turns$"):
        to_hh_row(Comparison(CONV, "a", "b", choice="A"))
    with pytest.raises(DataError, match=r"^chosen: contains a '\\n\\nHuman:' marker$"):
        to_hh_row(Comparison("p", "a\n\nHuman: more?", "b", choice="A"))
    with pytest.raises(DataError, match="^choice: an unlabelled comparison"):
        to_hh_row(Comparison("p", "a", "b"))


def test_bad_gzip_is_a_data_error(tmp_path):
    path = _write(tmp_path, gzip.compress(b'{"chosen": "x"}\n')[:-6], name="cut.jsonl.gz")
    assert _error(read_hh, path).startswith(f"{path}: not a readable gzip file (")


def _real_hh() -> Path | None:
    for root in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")):
        path = root / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
        if path.exists():
            return path
    return None


REAL_HH = _real_hh()


@pytest.mark.skipif(REAL_HH is None, reason="shared/data/hh-rlhf/harmless-base-test.jsonl.gz not found")
def test_all_2312_real_hh_rows_load_and_only_four_empty_replies_are_refused():
    comparisons, skipped = read_hh(REAL_HH, strict=False)
    # Four rows prefer an empty reply over a harmful one; tether's rules refuse empty responses.
    assert skipped == [(n, "chosen: empty final assistant reply") for n in (87, 517, 926, 1104)]
    assert len(comparisons) == 2308 and len(comparisons) + len(skipped) == 2312
    with pytest.raises(DataError, match=rf"^{REAL_HH}:87: chosen: empty final assistant reply$"):
        read_hh(REAL_HH)
    for c in comparisons:
        validate_comparison(c)
    rows = [json.loads(line) for line in gzip.decompress(REAL_HH.read_bytes()).splitlines()]
    assert all(to_hh_row(c) == rows[c.meta["line"] - 1] for c in comparisons)  # byte-exact round trip
    assert len({c.id for c in comparisons}) == 2308


# ---------------------------------------------------------------------------------------------- statistics


def test_length_stats_by_hand():
    comparisons = [
        Comparison("one two", "a b c", "d", choice="A"),                          # prompt 2, responses 3 and 1
        Comparison([{"role": "user", "content": "x y z"}, {"role": "assistant", "content": "w"},
                    {"role": "user", "content": "v"}], "e f", "g h i j", choice="A"),  # prompt 3+1+1 = 5; 2, 4
        Comparison("k", "l m n o p q", "r", choice="B"),                          # prompt 1; 6, 1; chosen = "r"
        Comparison("s t u", "v", "w x", choice="tie"),                            # prompt 3; 1, 2
    ]
    stats = length_stats(comparisons)
    # prompts sorted [1, 2, 3, 5]: mean 11/4; p50 at rank 1.5 -> 2.5; p95 at rank 2.85 -> 3 + 0.85*2 = 4.7
    assert stats["prompt"] == {"min": 1, "mean": 2.75, "p50": 2.5, "p95": pytest.approx(4.7), "max": 5}
    # responses sorted [1, 1, 1, 2, 2, 3, 4, 6]: mean 20/8; p50 at rank 3.5 -> 2; p95 at rank 6.65 -> 4 + 0.65*2
    assert stats["response"] == {"min": 1, "mean": 2.5, "p50": 2.0, "p95": pytest.approx(5.3), "max": 6}
    # pairs = prompt + longer response: 2+3, 5+4, 1+6, 3+2 = [5, 9, 7, 5] -> sorted [5, 5, 7, 9]
    assert stats["pair"] == {"min": 5, "mean": 6.5, "p50": 6.0, "p95": pytest.approx(8.7), "max": 9}
    # labelled A/B pairs: chosen 3 > 1 yes, 2 > 4 no, 1 > 6 no -> 1/3 (the tie is left out)
    assert stats["n"] == 4 and stats["chosen_longer"] == pytest.approx(1 / 3)
    # count_tokens=len counts characters: prompts "one two" 7, the conversation 5+1+1 = 7, "k" 1, "s t u" 5
    assert length_stats(comparisons, count_tokens=len)["prompt"]["mean"] == 5.0
    assert length_stats([Comparison("p", "a", "b")])["chosen_longer"] is None

    report = truncation_report(comparisons, whitespace_words, max_length=6)
    # pair lengths [5, 9, 7, 5] > 6: two; prompts >= 6: none
    assert report == {"n": 4, "max_length": 6, "truncated": 2, "fraction": 0.5, "prompt_too_long": 0}
    assert truncation_report(comparisons, whitespace_words, 3)["prompt_too_long"] == 2  # prompts 5 and 3
    assert truncation_report(comparisons, whitespace_words, 7)["truncated"] == 1  # a pair of exactly 7 fits
    with pytest.raises(ValueError, match="max_length"):
        truncation_report(comparisons, whitespace_words, 0)
    with pytest.raises(ValueError, match="no comparisons"):
        length_stats([])

"""tether.data.unpaired: TRL unpaired rows read strictly, comparisons converted (ties counted), round trips,
and the mismatched pairing of KTO's KL reference point."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.data.preferences import Comparison, write_comparisons
from tether.data.unpaired import (
    Unpaired,
    comparisons_to_unpaired,
    mismatched_partners,
    read_kto_rows,
    read_unpaired,
    write_unpaired,
)
from tether.errors import DataError

CONV = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Capital of France?"}]
GOOD = {"prompt": "2+2?", "completion": "4", "label": True}


def _write(tmp_path, rows: list, name: str = "kto.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def _error(tmp_path, rows: list) -> str:
    with pytest.raises(DataError) as info:
        read_unpaired(_write(tmp_path, rows))
    return str(info.value)


def test_plain_and_conversational_rows(tmp_path):
    rows = read_unpaired(_write(tmp_path, [GOOD, "", {"prompt": "2+2?", "completion": "5", "label": False,
                                                      "source": "ignored"}]))
    assert rows == [Unpaired("2+2?", "4", True), Unpaired("2+2?", "5", False)]
    conv = {"prompt": CONV, "completion": [{"role": "assistant", "content": "Paris."}], "label": False}
    assert read_unpaired(_write(tmp_path, [conv])) == [Unpaired(CONV, "Paris.", False)]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "2+2?", "completion": "4", "label": "true"}, 'label: expected true or false, got a string ("true")'),
    ({"prompt": "2+2?", "completion": "4", "label": 1}, "label: expected true or false, got a number (1)"),
    ({"prompt": "2+2?", "completion": "4", "label": None}, "label: expected true or false, got null (null)"),
    ({"prompt": "2+2?", "completion": "  ", "label": True}, "completion: empty or whitespace-only"),
    ({"prompt": "2+2?", "label": True}, "completion: missing"),
    ({"completion": "4", "label": True}, "prompt: missing"),
    ({"prompt": "2+2?", "completion": "4"}, "label: missing"),
    ({"prompt": 7, "completion": "4", "label": True}, "prompt: expected a string (plain) or a list of messages"),
    ({"prompt": "2+2?", "completion": [{"role": "assistant", "content": "4"}], "label": True},
     "completion: a list of messages in a plain row"),
    ({"prompt": CONV, "completion": "Paris.", "label": True}, "prompt: a conversational row in a file whose first "
                                                              "row (line 1) is plain"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    text = _error(tmp_path, [GOOD, "", row])  # the bad row on line 3, after a blank line
    assert text.startswith(f"{tmp_path / 'kto.jsonl'}:3: ") and message in text, text


def test_conversational_completion_must_be_one_assistant_message(tmp_path):
    row = {"prompt": CONV, "completion": [{"role": "user", "content": "Paris."}], "label": True}
    assert "kto.jsonl:1: completion[0].role: expected 'assistant', got 'user'" in _error(tmp_path, [row])


@pytest.mark.parametrize("conversational", [False, True])
def test_round_trip(tmp_path, conversational):
    rows = [Unpaired("2+2?", "4", True), Unpaired("Say hi.", "Go away.\u2028", False)]
    if conversational:
        rows.append(Unpaired(CONV, "Paris.", True))
    path = tmp_path / "out.jsonl"
    assert write_unpaired(path, rows, conversational=conversational) == len(rows)
    # Written conversational, a string prompt comes back as one user message.
    expected = [Unpaired([{"role": "user", "content": r.prompt}] if conversational and isinstance(r.prompt, str)
                         else r.prompt, r.completion, r.label) for r in rows]
    assert read_unpaired(path) == expected
    assert len(path.read_text().splitlines()) == len(rows)  # U+2028 escaped: a row stays one line
    gz = tmp_path / "out.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_unpaired(gz) == expected
    assert write_unpaired(tmp_path / "again.jsonl", expected, conversational) and \
        (tmp_path / "again.jsonl").read_text() == path.read_text()  # and writes the same bytes again


def test_write_checks_rows(tmp_path):
    with pytest.raises(DataError, match=r"out\.jsonl:2: completion: empty or whitespace-only"):
        write_unpaired(tmp_path / "out.jsonl", [Unpaired("a?", "b", True), Unpaired("a?", " ", False)])
    with pytest.raises(DataError, match=r"out\.jsonl:1: prompt: a conversation cannot be written as a plain row"):
        write_unpaired(tmp_path / "out.jsonl", [Unpaired(CONV, "Paris.", True)])


# -- comparisons converted ----------------------------------------------------------------------------------


def _comparisons() -> list[Comparison]:
    return [Comparison("2+2?", "4", "5", choice="A"), Comparison("Name a colour.", "seven", "blue", choice="B"),
            Comparison("Say hi.", "hi", "hello", choice="tie")]


def test_comparisons_become_two_rows_and_ties_are_dropped():
    rows, ties = comparisons_to_unpaired(_comparisons())
    assert ties == 1
    assert rows == [Unpaired("2+2?", "4", True), Unpaired("2+2?", "5", False),
                    Unpaired("Name a colour.", "blue", True), Unpaired("Name a colour.", "seven", False)]
    with pytest.raises(DataError, match="comparison 1: choice: null"):
        comparisons_to_unpaired([Comparison("a?", "b", "c")])


def test_read_kto_rows_reads_comparison_files_and_reports(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_comparisons(path, _comparisons())
    rows, report = read_kto_rows(path)
    assert rows == comparisons_to_unpaired(_comparisons())[0]
    assert report == {"format": "comparison", "file_rows": 3, "ties_dropped": 1, "desirable": 2, "undesirable": 2}
    # Converted, written as unpaired rows, read back: the same rows.
    write_unpaired(tmp_path / "u.jsonl", rows)
    assert read_unpaired(tmp_path / "u.jsonl") == rows
    _, report = read_kto_rows(_write(tmp_path, [GOOD, {**GOOD, "label": False}]))
    assert report == {"format": "plain", "file_rows": 2, "ties_dropped": 0, "desirable": 1, "undesirable": 1}


def test_read_kto_rows_errors(tmp_path):
    queue = {"prompt": "a?", "response_a": "b", "response_b": "c"}
    with pytest.raises(DataError, match=r"kto\.jsonl:2: choice: null \(an unrated queue item\)"):
        read_kto_rows(_write(tmp_path, [{**queue, "choice": "A"}, queue]))
    with pytest.raises(DataError, match=r"kto\.jsonl:2: prompt: a plain row in a file whose first row \(line 1\) "
                                        r"is comparison"):
        read_kto_rows(_write(tmp_path, [{**queue, "choice": "A"}, GOOD]))
    with pytest.raises(DataError, match=r"kto\.jsonl:1: response_b: identical to response_a"):
        read_kto_rows(_write(tmp_path, [{**queue, "response_b": "b", "choice": "A"}]))
    # read_unpaired does not take comparisons: a comparison row lacks completion.
    with pytest.raises(DataError, match=r"kto\.jsonl:1: completion: missing"):
        read_unpaired(_write(tmp_path, [{**queue, "choice": "A"}]))


# -- the mismatched pairs of the KL reference point ---------------------------------------------------------


def test_mismatched_partners_by_hand():
    # Two prompts, each twice (as a comparison converted gives): every row takes a completion of the other prompt.
    keys = ["p", "p", "q", "q"]
    partners = mismatched_partners(keys, seed=0)
    assert all(keys[j] != keys[i] for i, j in enumerate(partners))
    assert partners == mismatched_partners(keys, seed=0)  # fixed for a seed (the reference cache relies on it)
    # One prompt only: the next row in the seeded order (another completion of the same prompt); one row: itself.
    same = mismatched_partners(["p"] * 3, seed=1)
    assert sorted(same) == [0, 1, 2] and all(j != i for i, j in enumerate(same))
    assert mismatched_partners(["p"], seed=0) == [0] and mismatched_partners([], seed=0) == []


@given(st.lists(st.sampled_from("abcd"), min_size=2, max_size=40), st.integers(0, 10_000))
def test_mismatched_partners_always_answer_another_prompt(keys, seed):
    partners = mismatched_partners(keys, seed)
    assert len(partners) == len(keys) and all(0 <= j < len(keys) for j in partners)
    if len(set(keys)) > 1:
        assert all(keys[j] != keys[i] for i, j in enumerate(partners))
    else:
        assert all(j != i for i, j in enumerate(partners))

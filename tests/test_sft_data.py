"""tether.data.sft_data: the three accepted row shapes, and one exact message per kind of bad row."""

from __future__ import annotations

import json

import pytest

from tether.data.sft_data import ROLES, read_conversations, write_conversations
from tether.errors import DataError

USER = {"role": "user", "content": "Hi"}
BOT = {"role": "assistant", "content": "Hello!"}
GOOD = json.dumps({"messages": [USER, BOT]})


def _write(tmp_path, lines: list[str] | bytes, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _error(path: str) -> str:
    with pytest.raises(DataError) as info:
        read_conversations(path)
    return str(info.value)


def test_reads_all_three_shapes_and_skips_blank_lines(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"messages": [{"role": "system", "content": "Be brief."}, USER, BOT], "id": 7}),
            "",
            "   ",
            json.dumps({"prompt": "2+2?", "completion": " 4"}),
            json.dumps(
                {
                    "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                    "completion": [{"role": "assistant", "content": "A", "weight": 1}],
                }
            ),
        ],
    )
    assert read_conversations(path) == [
        [{"role": "system", "content": "Be brief."}, USER, BOT],
        ("2+2?", " 4"),  # a plain pair stays a (prompt, completion) tuple; content not stripped
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},  # extra keys dropped
        ],
    ]


def test_crlf_bom_and_no_final_newline_are_accepted(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + GOOD.encode())
    assert read_conversations(path) == [[USER, BOT], [USER, BOT]]


def test_non_ascii_content_survives(tmp_path):
    row = {"messages": [{"role": "user", "content": "Grüße 你好"}, {"role": "assistant", "content": "🙂"}]}
    path = _write(tmp_path, [json.dumps(row, ensure_ascii=False)])
    assert read_conversations(path)[0][0]["content"] == "Grüße 你好"


def _msgs(*messages) -> str:
    return json.dumps({"messages": list(messages)})


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"messages": [1 2]}', "<json>: not valid JSON (Expecting ',' delimiter, column 17)"),
        ('{"messages": []} {}', "<json>: not valid JSON (Extra data, column 18)"),
        ("[1, 2]", "<row>: expected a JSON object, got an array"),
        ('"text"', "<row>: expected a JSON object, got a string"),
        ('{"text": "hi"}', "messages: missing (expected 'messages' or 'prompt'+'completion')"),
        ('{"messages": {}}', "messages: expected a list of messages, got an object"),
        ('{"messages": []}', "messages: empty list"),
        (_msgs("hi"), "messages[0]: expected an object with 'role' and 'content', got a string"),
        (_msgs({"content": "x"}), "messages[0].role: missing"),
        (_msgs(USER, {"role": "bot", "content": "x"}), "messages[1].role: unknown role 'bot' (allowed: system, user, assistant)"),
        (_msgs({"role": 3, "content": "x"}), "messages[0].role: unknown role 3 (allowed: system, user, assistant)"),
        (_msgs(USER, {"role": "system", "content": "x"}, BOT), "messages[1].role: 'system' is only allowed as the first message"),
        (_msgs({"role": "user"}, BOT), "messages[0].content: missing"),
        (_msgs({"role": "user", "content": ""}, BOT), "messages[0].content: empty or whitespace-only"),
        (_msgs(USER, {"role": "assistant", "content": " \n\t"}), "messages[1].content: empty or whitespace-only"),
        (_msgs(USER, {"role": "assistant", "content": 5}), "messages[1].content: expected a string, got a number"),
        (_msgs(USER, {"role": "assistant", "content": [{"type": "text"}]}), "messages[1].content: expected a string, got an array"),
        (_msgs(USER, {"role": "assistant", "content": None}), "messages[1].content: expected a string, got null"),
        (_msgs(USER, USER), "messages: no assistant message"),
        ('{"messages": [], "prompt": "p"}', "messages: give either 'messages' or 'prompt'+'completion', not both"),
        ('{"prompt": "p"}', "completion: missing (a row with 'prompt' needs 'completion')"),
        ('{"completion": "c"}', "prompt: missing (a row with 'completion' needs 'prompt')"),
        ('{"prompt": "p", "completion": "   "}', "completion: empty or whitespace-only"),
        ('{"prompt": "", "completion": "c"}', "prompt: empty or whitespace-only"),
        ('{"prompt": 1, "completion": "c"}', "prompt: expected a string or a list of messages, got a number"),
        ('{"prompt": "p", "completion": true}', "completion: expected a string or a list of messages, got a boolean"),
        ('{"prompt": "p", "completion": [{"role": "user", "content": "u"}]}', "completion: no assistant message"),
        ('{"prompt": "p", "completion": [{"role": "system", "content": "s"}]}', "completion[0].role: 'system' is only allowed as the first message"),
        ('{"prompt": [{"role": "user", "content": ""}], "completion": "c"}', "prompt[0].content: empty or whitespace-only"),
    ],
)  # fmt: skip
def test_bad_row_message_names_file_line_and_field(tmp_path, line, message):
    # the bad row is on line 3, after a good row and a blank line, so the line count is checked too
    path = _write(tmp_path, [GOOD, "", line, GOOD])
    assert _error(path) == f"{path}:3: {message}"


def test_invalid_utf8_is_reported_with_line_and_byte(tmp_path):
    # line 2 is `{"a": "` (7 bytes) then 0xff, the 8th byte of the line
    path = _write(tmp_path, GOOD.encode() + b'\n{"a": "\xff"}\n')
    assert _error(path) == f"{path}:2: <utf-8>: invalid UTF-8 at byte 8"


def test_file_level_errors(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert _error(str(missing)) == f"{missing}: file not found"
    assert _error(str(tmp_path)) == f"{tmp_path}: is a directory, expected a JSONL file"
    assert _error(_write(tmp_path, b"", "empty.jsonl")) == f"{tmp_path / 'empty.jsonl'}: no rows"
    assert _error(_write(tmp_path, b"\n  \n\n", "blank.jsonl")) == f"{tmp_path / 'blank.jsonl'}: no rows"


def test_write_then_read_round_trips(tmp_path):
    conversations = [
        [{"role": "system", "content": "S"}, USER, BOT],
        [{"role": "user", "content": "line\nbreak \u2028 é"}, {"role": "assistant", "content": "ok"}],
        ("plain prompt", "plain completion"),
    ]
    path = tmp_path / "out" / "sft.jsonl"
    write_conversations(path, conversations)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[0]) == {"messages": conversations[0]}
    assert json.loads(lines[2]) == {"prompt": "plain prompt", "completion": "plain completion"}
    assert read_conversations(path) == conversations


def test_write_rejects_what_read_would_reject(tmp_path):
    path = tmp_path / "bad.jsonl"
    with pytest.raises(DataError) as info:
        write_conversations(path, [[USER, BOT], [USER]])
    assert str(info.value) == f"{path}:2: messages: no assistant message"
    with pytest.raises(DataError) as info:
        write_conversations(path, [[{"role": "tool", "content": "x"}]])
    assert str(info.value) == f"{path}:1: messages[0].role: unknown role 'tool' (allowed: system, user, assistant)"
    with pytest.raises(DataError) as info:
        write_conversations(path, [])
    assert str(info.value) == f"{path}: no conversations to write"
    assert not path.exists()


def test_roles():
    assert ROLES == ("system", "user", "assistant")

"""Read and write SFT conversations as JSONL, rejecting every malformed row as `file:line: field: problem`.

One JSON object per line (blank lines are skipped), in one of three shapes:

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    {"prompt": "Hi", "completion": "Hello!"}                      -> [user "Hi", assistant "Hello!"]
    {"prompt": [...messages], "completion": [...messages]}       TRL's conversational prompt-completion

Roles are system, user, assistant; a system message may only come first; every content is a
non-blank string; every conversation has an assistant message (SFT's loss is on assistant tokens,
so a row without one would train on nothing). Other keys, in rows or messages, are ignored.
Tokenisation and truncation live elsewhere; this module only validates and parses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tether.errors import DataError

__all__ = ["ROLES", "Conversation", "Message", "read_conversations", "write_conversations"]

ROLES = ("system", "user", "assistant")

Message = dict[str, str]
"""`{"role": one of ROLES, "content": non-blank str}`."""
Conversation = list[Message]


class _Bad(Exception):
    """A problem with one row, before the file name and line number are known."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


def read_conversations(path: str | Path) -> list[Conversation]:
    """All conversations in the JSONL file at `path`; raises DataError at the first bad row.

    Lines are decoded one by one as strict UTF-8, so a bad byte is reported with its line
    (`<utf-8>: invalid UTF-8 at byte N`, N counted from 1 within the line).
    """
    raw = _read_bytes(path)
    conversations = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            row = _decode_row(line, lineno)
            if row is not None:
                conversations.append(_parse_row(row))
        except _Bad as bad:
            raise DataError(f"{path}:{lineno}: {bad}") from None
    if not conversations:
        raise DataError(f"{path}: no rows")
    return conversations


def write_conversations(path: str | Path, conversations: Iterable[Conversation]) -> None:
    """Write `{"messages": [...]}` rows, validated by the same rules `read_conversations` applies.

    Checking before writing means a file this writes always reads back; a bad conversation
    raises DataError as `path:N: messages...`, N being the line it would have had.
    """
    lines = []
    for lineno, conversation in enumerate(conversations, start=1):
        try:
            messages = _messages(conversation, "messages")
            _require_assistant(messages, "messages")
        except _Bad as bad:
            raise DataError(f"{path}:{lineno}: {bad}") from None
        line = json.dumps({"messages": messages}, ensure_ascii=False)
        # U+2028/2029 are line breaks to str.splitlines and some editors; escaped, a row stays one line
        lines.append(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    if not lines:
        raise DataError(f"{path}: no conversations to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _decode_row(line: bytes, lineno: int) -> dict | None:
    """The JSON object on one line, or None for a blank line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Bad("<utf-8>", f"invalid UTF-8 at byte {err.start + 1}") from None
    if lineno == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark, as some Windows editors write
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise _Bad("<json>", f"not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise _Bad("<row>", f"expected a JSON object, got {_kind(row)}")
    return row


def _parse_row(row: dict[str, Any]) -> Conversation:
    has_messages = "messages" in row
    has_pair = "prompt" in row or "completion" in row
    if has_messages and has_pair:
        raise _Bad("messages", "give either 'messages' or 'prompt'+'completion', not both")
    if has_messages:
        messages = _messages(row["messages"], "messages")
        _require_assistant(messages, "messages")
        return messages
    if not has_pair:
        raise _Bad("messages", "missing (expected 'messages' or 'prompt'+'completion')")
    if "completion" not in row:
        raise _Bad("completion", "missing (a row with 'prompt' needs 'completion')")
    if "prompt" not in row:
        raise _Bad("prompt", "missing (a row with 'completion' needs 'prompt')")
    prompt = _turns(row["prompt"], "prompt", "user")
    completion = _turns(row["completion"], "completion", "assistant")
    _require_assistant(completion, "completion")
    return prompt + completion


def _turns(value: Any, field: str, role: str) -> Conversation:
    """A prompt or completion: a plain string (one `role` message) or a list of messages."""
    if isinstance(value, str):
        _text(value, field)
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        # a system message belongs at the start of the prompt, never inside the completion
        return _messages(value, field, system_allowed=field == "prompt")
    raise _Bad(field, f"expected a string or a list of messages, got {_kind(value)}")


def _messages(value: Any, field: str, system_allowed: bool = True) -> Conversation:
    """Validated copies `{"role", "content"}` of a message list; extra keys are dropped."""
    if not isinstance(value, list):
        raise _Bad(field, f"expected a list of messages, got {_kind(value)}")
    if not value:
        raise _Bad(field, "empty list")
    out = []
    for i, message in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _Bad(at, f"expected an object with 'role' and 'content', got {_kind(message)}")
        if "role" not in message:
            raise _Bad(f"{at}.role", "missing")
        role = message["role"]
        if role not in ROLES:
            raise _Bad(f"{at}.role", f"unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if role == "system" and (i > 0 or not system_allowed):
            # chat templates put the system prompt first; one mid-conversation is a data bug
            raise _Bad(f"{at}.role", "'system' is only allowed as the first message")
        if "content" not in message:
            raise _Bad(f"{at}.content", "missing")
        _text(message["content"], f"{at}.content")
        out.append({"role": role, "content": message["content"]})
    return out


def _text(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise _Bad(field, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise _Bad(field, "empty or whitespace-only")


def _require_assistant(messages: Conversation, field: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise _Bad(field, "no assistant message")


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    for tp, name in kinds.items():
        if isinstance(value, tp):
            return name
    return type(value).__name__

"""Read and write SFT conversations as JSONL, rejecting every malformed row as `file:line: field: problem`.

One JSON object per line (blank lines are skipped), in one of three shapes:

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    {"prompt": "Hi", "completion": "Hello!"}                      -> ("Hi", "Hello!"), a plain pair
    {"prompt": [...messages], "completion": [...messages]}       TRL's conversational prompt-completion

A plain pair stays a tuple of two strings so that the chat-format code can render it as text for a model
without a chat template and as [user, assistant] messages for one with a template; every other row reads
as a message list (a string prompt or completion beside a message list becomes one user/assistant message).

Roles are system, user, assistant; a system message may only come first; every content is a
non-blank string; every conversation has an assistant message (SFT's loss is on assistant tokens,
so a row without one would train on nothing). Other keys, in rows or messages, are ignored.
Tokenisation and truncation live elsewhere; this module only validates and parses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from tether.data.jsonl import RowError, json_kind, read_rows
from tether.errors import DataError

__all__ = ["ROLES", "Conversation", "Example", "Message", "as_messages", "read_conversations", "write_conversations"]

ROLES = ("system", "user", "assistant")

Message = dict[str, str]
"""`{"role": one of ROLES, "content": non-blank str}`."""
Conversation = list[Message]
Example = Union[Conversation, tuple[str, str]]
"""An SFT example: a conversation, or a plain (prompt, completion) pair of strings."""


def read_conversations(path: str | Path) -> list[Example]:
    """All examples in the JSONL file at `path` (plain prompt/completion rows as (prompt, completion) tuples);
    raises DataError at the first bad row.

    Lines are decoded one by one as strict UTF-8, so a bad byte is reported with its line
    (`<utf-8>: invalid UTF-8 at byte N`, N counted from 1 within the line).
    """
    return read_rows(path, lambda row, lineno: _parse_row(row))[0]


def write_conversations(path: str | Path, conversations: Iterable[Example]) -> None:
    """Write `{"messages": [...]}` rows (a (prompt, completion) tuple as a plain prompt/completion row), validated
    by the same rules `read_conversations` applies.

    Checking before writing means a file this writes always reads back; a bad conversation
    raises DataError as `path:N: messages...`, N being the line it would have had.
    """
    lines = []
    for lineno, conversation in enumerate(conversations, start=1):
        try:
            if isinstance(conversation, tuple):
                row = {"prompt": conversation[0], "completion": conversation[1]}
                _parse_row(row)
            else:
                row = {"messages": _messages(conversation, "messages")}
                _require_assistant(row["messages"], "messages")
        except RowError as bad:
            raise DataError(f"{path}:{lineno}: {bad}") from None
        line = json.dumps(row, ensure_ascii=False)
        # U+2028/2029 are line breaks to str.splitlines and some editors; escaped, a row stays one line
        lines.append(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    if not lines:
        raise DataError(f"{path}: no conversations to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def as_messages(example: Example) -> Conversation:
    """A plain (prompt, completion) pair as [user, assistant] messages; a conversation unchanged."""
    if isinstance(example, tuple):
        return [{"role": "user", "content": example[0]}, {"role": "assistant", "content": example[1]}]
    return example


def _parse_row(row: dict[str, Any]) -> Example:
    has_messages = "messages" in row
    has_pair = "prompt" in row or "completion" in row
    if has_messages and has_pair:
        raise RowError("messages", "give either 'messages' or 'prompt'+'completion', not both")
    if has_messages:
        messages = _messages(row["messages"], "messages")
        _require_assistant(messages, "messages")
        return messages
    if not has_pair:
        raise RowError("messages", "missing (expected 'messages' or 'prompt'+'completion')")
    if "completion" not in row:
        raise RowError("completion", "missing (a row with 'prompt' needs 'completion')")
    if "prompt" not in row:
        raise RowError("prompt", "missing (a row with 'completion' needs 'prompt')")
    if isinstance(row["prompt"], str) and isinstance(row["completion"], str):
        _text(row["prompt"], "prompt")
        _text(row["completion"], "completion")
        return (row["prompt"], row["completion"])
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
    raise RowError(field, f"expected a string or a list of messages, got {json_kind(value)}")


def _messages(value: Any, field: str, system_allowed: bool = True) -> Conversation:
    """Validated copies `{"role", "content"}` of a message list; extra keys are dropped."""
    if not isinstance(value, list):
        raise RowError(field, f"expected a list of messages, got {json_kind(value)}")
    if not value:
        raise RowError(field, "empty list")
    out = []
    for i, message in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RowError(at, f"expected an object with 'role' and 'content', got {json_kind(message)}")
        if "role" not in message:
            raise RowError(f"{at}.role", "missing")
        role = message["role"]
        if role not in ROLES:
            raise RowError(f"{at}.role", f"unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if role == "system" and (i > 0 or not system_allowed):
            # chat templates put the system prompt first; one mid-conversation is a data bug
            raise RowError(f"{at}.role", "'system' is only allowed as the first message")
        if "content" not in message:
            raise RowError(f"{at}.content", "missing")
        _text(message["content"], f"{at}.content")
        out.append({"role": role, "content": message["content"]})
    return out


def _text(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {json_kind(value)}")
    if not value.strip():
        raise RowError(field, "empty or whitespace-only")


def _require_assistant(messages: Conversation, field: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(field, "no assistant message")
    if messages[-1]["role"] != "assistant":  # nothing after the last reply would train
        raise RowError(field, "the last message must be an assistant reply")

"""Preference records: one comparison of two responses to one prompt, with the provenance of its label.

A comparison without a `choice` is a queue item waiting for a rater (human or simulated).

Three file formats, each read strictly (errors read `file:line: field: problem`, as in `sft_data`):

    tether JSONL   the `Comparison` fields as keys; ties and unlabelled queue items are kept
    TRL            {"prompt": str, "chosen": str, "rejected": str}                          plain
                   {"prompt": [msgs], "chosen": [assistant msg], "rejected": [assistant msg]} conversational
    HH-RLHF        {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}: two whole dialogues
                   sharing everything before the final assistant reply (Bai et al. 2022)

TRL and HH rows hold only a winner and a loser: they read as choice "A" with response_a the chosen one,
and a tie cannot be written to them (the writers skip ties and return how many).
Files may be gzip-compressed. This module imports no torch: the rater web app uses it.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, overload

from tether.data.jsonl import RowError, Skipped, SkipRow, json_kind, read_rows
from tether.data.sft_data import _messages, _text
from tether.errors import DataError

__all__ = [
    "CHOICES", "Comparison", "from_trl_row", "length_stats", "pair_id", "read_comparisons", "read_hh",
    "read_trl", "to_hh_row", "to_trl_row", "truncation_report", "validate_comparison", "whitespace_words",
    "write_comparisons", "write_trl",
]

Choice = Literal["A", "B", "tie"]
CHOICES = ("A", "B", "tie")
Prompt = Union[str, list]  # a plain user prompt, or a conversation prefix (messages) ending with a user turn


@dataclass
class Comparison:
    """Two responses to one prompt and, once rated, which is better.

    `strength` is the rater's confidence in (0, 1] (e.g. 1 = "much better", 0.5 = "slightly"), None if not
    asked. `source_a`/`source_b` name the policy (checkpoint path, "human", ...) that wrote each response.
    `meta` holds free provenance such as the iterate round or the sampling temperature.
    """

    prompt: Prompt
    response_a: str
    response_b: str
    choice: Choice | None = None
    strength: float | None = None
    rater: str | None = None
    guideline_version: str | None = None
    source_a: str | None = None
    source_b: str | None = None
    timestamp: str | None = None
    id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = pair_id(self.prompt, self.response_a, self.response_b)

    @property
    def prompt_key(self) -> str:
        return prompt_key(self.prompt)

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (the last user turn's content for a conversation)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return next(m["content"] for m in reversed(self.prompt) if m["role"] == "user")

    @property
    def chosen(self) -> str | None:
        """The preferred response; None for a tie or an unlabelled item."""
        return {"A": self.response_a, "B": self.response_b}.get(self.choice)

    @property
    def rejected(self) -> str | None:
        """The dispreferred response; None for a tie or an unlabelled item."""
        return {"A": self.response_b, "B": self.response_a}.get(self.choice)

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_key(prompt: Prompt) -> str:
    """A canonical string of a prompt (plain or conversation), to group and split comparisons by prompt."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def split_by_prompt(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded (train, held-out) split of items with a `.prompt_key` in which no prompt is on both sides.

    At least one prompt is held out when fraction > 0 and there are two or more prompts.
    """
    keys = sorted({item.prompt_key for item in items})
    random.Random(seed).shuffle(keys)
    k = max(1, int(len(keys) * fraction)) if fraction > 0 and len(keys) > 1 else 0
    held = set(keys[:k])
    return [x for x in items if x.prompt_key not in held], [x for x in items if x.prompt_key in held]


def pair_id(prompt: Prompt, a: str, b: str) -> str:
    """A stable id of the unordered pair: the same two responses in either order get the same id."""
    key = json.dumps([prompt, sorted([a, b])], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- tether JSONL

FIELDS = tuple(f.name for f in fields(Comparison))
_OPTIONAL_STRINGS = ("rater", "guideline_version", "source_a", "source_b", "timestamp")


def read_comparisons(path: str | Path) -> list[Comparison]:
    """All comparisons in tether's JSONL at `path`; raises DataError at the first bad row.

    Required: prompt, response_a, response_b. Unknown keys are errors (free provenance goes in `meta`),
    so a misspelt `stength` is caught rather than dropped.
    """
    comparisons, _ = read_rows(path, lambda row, lineno: _parse_comparison(row))
    return comparisons


def read_labelled(path: str | Path) -> list[Comparison]:
    """`read_comparisons`, and a DataError `file:line: choice: ...` at the first unlabelled row (DPO and the other
    preference trainers learn from labels only)."""
    rows, _ = read_rows(path, lambda row, lineno: (lineno, _parse_comparison(row)))
    unlabelled = [lineno for lineno, c in rows if c.choice is None]
    if unlabelled:
        raise DataError(f"{path}:{unlabelled[0]}: choice: null (an unrated queue item; {len(unlabelled)} in the "
                        "file): DPO trains on labelled rows only; rate them (`tether label`) or remove them")
    return [c for _, c in rows]


def write_comparisons(path: str | Path, comparisons: Iterable[Comparison]) -> None:
    """Write tether JSONL, each comparison checked by the rules `read_comparisons` applies.

    A bad comparison raises DataError as `path:N: field: problem`, N being the line it would have had.
    """
    lines = []
    for n, c in enumerate(comparisons, start=1):
        try:
            lines.append(_dumps(_parse_comparison(c.to_dict()).to_dict(), "meta"))
        except RowError as bad:
            raise DataError(f"{path}:{n}: {bad}") from None
    _write_lines(path, lines, "comparisons")


def validate_comparison(c: Comparison) -> None:
    """Raise DataError(`field: problem`) if `c` breaks a rule of tether's format (for records built in code)."""
    try:
        _parse_comparison(c.to_dict())
    except RowError as bad:
        raise DataError(str(bad)) from None


def _parse_comparison(row: dict[str, Any]) -> Comparison:
    unknown = [key for key in row if key not in FIELDS]
    if unknown:
        raise RowError(unknown[0], f"unknown field (allowed: {', '.join(FIELDS)})")
    for name in ("prompt", "response_a", "response_b"):
        if name not in row:
            raise RowError(name, "missing")
    prompt = _prompt(row["prompt"], "prompt")
    a, b = row["response_a"], row["response_b"]
    _text(a, "response_a")
    _text(b, "response_b")
    if a.strip() == b.strip():
        raise RowError("response_b", "identical to response_a")
    choice = row.get("choice")
    if choice is not None and (not isinstance(choice, str) or choice not in CHOICES):
        raise RowError("choice", f'expected "A", "B", "tie" or null, got {json.dumps(choice)}')
    strength = row.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise RowError("strength", f"expected a number in (0, 1] or null, got {json_kind(strength)}")
        if not 0 < strength <= 1:  # also rejects NaN
            raise RowError("strength", f"{strength} is outside (0, 1]")
        if choice is None:
            raise RowError("strength", "given for an unlabelled comparison (choice is null)")
    for name in _OPTIONAL_STRINGS + ("id",):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise RowError(name, f"expected a string or null, got {json_kind(row[name])}")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise RowError("meta", f"expected an object, got {json_kind(meta)}")
    return Comparison(prompt, a, b, choice, strength, id=row.get("id") or "", meta=dict(meta),
                      **{name: row.get(name) for name in _OPTIONAL_STRINGS})


def _prompt(value: Any, field: str) -> Prompt:
    """A non-blank string, or a message list (validated copies) ending with a user turn."""
    if isinstance(value, str):
        _text(value, field)
        return value
    if not isinstance(value, list):
        raise RowError(field, f"expected a string or a list of messages, got {json_kind(value)}")
    messages = _messages(value, field)
    if messages[-1]["role"] != "user":
        raise RowError(f"{field}[{len(messages) - 1}].role", "a prompt must end with a user message")
    return messages


# ------------------------------------------------------------------------------------------------------- TRL


def read_trl(path: str | Path) -> list[Comparison]:
    """TRL preference rows (all plain or all conversational) as comparisons with choice "A".

    Keys other than prompt/chosen/rejected are ignored. A row whose kind differs from the first row's
    is an error at that row: a file mixing the two would tokenise half its rows with the chat template.
    """
    first: list[tuple[str, int]] = []

    def parse(row: dict, lineno: int) -> Comparison:
        c, kind = _trl_row(row)
        if not first:
            first.append((kind, lineno))
        elif kind != first[0][0]:
            kind0, line0 = first[0]
            raise RowError("prompt", f"a {kind} row in a file whose first row (line {line0}) is {kind0}")
        return c

    comparisons, _ = read_rows(path, parse)
    return comparisons


def write_trl(path: str | Path, comparisons: Iterable[Comparison], conversational: bool = False) -> tuple[int, int]:
    """Write TRL rows; returns (n_written, n_skipped_ties), since a tie has no chosen response.

    Each comparison is first checked by tether's rules; an unlabelled one is an error. Errors read
    `path:N: field: problem`, N counting the comparisons given (from 1), ties included.
    """
    lines, ties = [], 0
    for n, c in enumerate(comparisons, start=1):
        try:
            c = _parse_comparison(c.to_dict())
            if c.choice == "tie":
                ties += 1
                continue
            lines.append(_dumps(_trl_out(c, conversational)))
        except RowError as bad:
            raise DataError(f"{path}:{n}: {bad}") from None
    _write_lines(path, lines, f"labelled comparisons ({ties} ties skipped)")
    return len(lines), ties


def from_trl_row(row: dict) -> Comparison:
    """One TRL row (plain or conversational) as a comparison; DataError(`field: problem`) if malformed."""
    try:
        return _trl_row(row)[0]
    except RowError as bad:
        raise DataError(str(bad)) from None


def to_trl_row(c: Comparison, conversational: bool = False) -> dict:
    """The TRL row of a labelled comparison (chosen = the preferred response).

    Conversational wraps a string prompt as one user message. A conversation prompt cannot be written plain.
    """
    try:
        return _trl_out(c, conversational)
    except RowError as bad:
        raise DataError(str(bad)) from None


def _trl_row(row: dict) -> tuple[Comparison, str]:
    """(comparison, "plain" | "conversational") of one row."""
    if not isinstance(row, dict):
        raise RowError("<row>", f"expected a JSON object, got {json_kind(row)}")
    for name in ("prompt", "chosen", "rejected"):
        if name not in row:
            hint = " (TRL's implicit-prompt rows, without 'prompt', are not supported)" if name == "prompt" else ""
            raise RowError(name, "missing" + hint)
    prompt = row["prompt"]
    if isinstance(prompt, str):
        kind, read = "plain", _plain_response
    elif isinstance(prompt, list):
        kind, read = "conversational", _conversational_response
    else:
        raise RowError("prompt", f"expected a string (plain) or a list of messages (conversational), got {json_kind(prompt)}")
    prompt = _prompt(prompt, "prompt")
    chosen, rejected = read(row["chosen"], "chosen"), read(row["rejected"], "rejected")
    if chosen.strip() == rejected.strip():
        raise RowError("rejected", "identical to chosen")
    return Comparison(prompt, chosen, rejected, choice="A"), kind


def _plain_response(value: Any, field: str) -> str:
    if isinstance(value, list):
        raise RowError(field, "a list of messages in a plain row (its prompt is a string)")
    _text(value, field)
    return value


def _conversational_response(value: Any, field: str) -> str:
    if not isinstance(value, list):
        raise RowError(field, f"expected a list with one assistant message (the prompt is a list), got {json_kind(value)}")
    messages = _messages(value, field, system_allowed=False)
    if len(messages) != 1:
        raise RowError(field, f"expected one assistant message, got {len(messages)}")
    if messages[0]["role"] != "assistant":
        raise RowError(f"{field}[0].role", f"expected 'assistant', got {messages[0]['role']!r}")
    return messages[0]["content"]


def _trl_out(c: Comparison, conversational: bool) -> dict:
    chosen, rejected = _winner_loser(c, "a TRL row")
    if conversational:
        prompt = [{"role": "user", "content": c.prompt}] if isinstance(c.prompt, str) else [dict(m) for m in c.prompt]
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    if not isinstance(c.prompt, str):
        raise RowError("prompt", "a conversation cannot be written as a plain TRL row (use conversational=True)")
    return {"prompt": c.prompt, "chosen": chosen, "rejected": rejected}


def _winner_loser(c: Comparison, target: str) -> tuple[str, str]:
    if c.choice in ("A", "B"):
        return c.chosen, c.rejected
    what = "a tie" if c.choice == "tie" else "an unlabelled comparison (null)"
    raise RowError("choice", f"{what} cannot be written as {target}, which needs a chosen response")


# --------------------------------------------------------------------------------------------------- HH-RLHF

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")


@overload
def read_hh(path: str | Path, strict: Literal[True] = ...) -> list[Comparison]: ...
@overload
def read_hh(path: str | Path, strict: Literal[False]) -> tuple[list[Comparison], Skipped]: ...


def read_hh(path, strict=True):
    """Anthropic HH-RLHF rows (.jsonl or .jsonl.gz) as comparisons with choice "A" (response_a = chosen).

    The prompt is the dialogue up to the final "\\n\\nAssistant:" (after the last "\\n\\nHuman:"), which
    both dialogues must share, as messages (Human -> user, Assistant -> assistant, one space after the
    colon dropped); each reply is the rest. A reply may itself contain "Assistant:" (the data has model
    continuations); it stays part of the reply. On every well-formed row this equals TRL's common-prefix
    split, but a pair that diverges earlier is reported instead of silently moving turns into the replies.

    strict=True raises DataError at the first bad row; strict=False returns (comparisons, skipped) with
    skipped = [(line, "field: problem"), ...]: real HH data has a few rows our rules refuse (empty replies).
    """
    comparisons, skipped = read_rows(path, _hh_row, strict=strict)
    return comparisons if strict else (comparisons, skipped)


def to_hh_row(c: Comparison) -> dict:
    """The HH-RLHF row of a labelled comparison; `read_hh` gives back its prompt and responses."""
    try:
        chosen, rejected = _winner_loser(c, "an HH-RLHF row")
        turns = [{"role": "user", "content": c.prompt}] if isinstance(c.prompt, str) else c.prompt
        prefix = ""
        for i, m in enumerate(turns):
            if m["role"] == "system":
                raise RowError(f"prompt[{i}].role", "HH-RLHF has no system turns")
            if _TURN.search(m["content"]):
                raise RowError(f"prompt[{i}].content", "contains a '\\n\\nHuman:' or '\\n\\nAssistant:' marker")
            prefix += f"{HUMAN if m['role'] == 'user' else ASSISTANT} {m['content']}"
        for name, reply in (("chosen", chosen), ("rejected", rejected)):
            if HUMAN in reply:  # would read back as a later user turn, moving the prompt's end
                raise RowError(name, "contains a '\\n\\nHuman:' marker")
    except RowError as bad:
        raise DataError(str(bad)) from None
    return {"chosen": f"{prefix}{ASSISTANT} {chosen}", "rejected": f"{prefix}{ASSISTANT} {rejected}"}


def _hh_row(row: dict, lineno: int) -> Comparison:
    for name in ("chosen", "rejected"):
        if name not in row:
            raise RowError(name, "missing")
        if not isinstance(row[name], str):
            raise RowError(name, f"expected a string, got {json_kind(row[name])}")
    prefix, chosen = _hh_split(row["chosen"], "chosen")
    other, rejected = _hh_split(row["rejected"], "rejected")
    if other != prefix:
        raise RowError("rejected", "differs from chosen before the final assistant turn (no shared prompt)")
    prompt = _hh_turns(prefix)
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise SkipRow(name, "empty final assistant reply")
    if chosen.strip() == rejected.strip():
        raise SkipRow("rejected", "final assistant reply identical to chosen's")
    return Comparison(prompt, chosen, rejected, choice="A", source_a="hh-rlhf", source_b="hh-rlhf",
                      meta={"source": "hh-rlhf", "line": lineno})


def _hh_split(dialogue: str, field: str) -> tuple[str, str]:
    """(text before the final assistant marker, the final reply)."""
    last_human = dialogue.rfind(HUMAN)
    if last_human < 0:
        raise RowError(field, "no '\\n\\nHuman:' turn")
    cut = dialogue.find(ASSISTANT, last_human)
    if cut < 0:
        raise RowError(field, "no '\\n\\nAssistant:' turn after the last '\\n\\nHuman:' turn")
    return dialogue[:cut], dialogue[cut + len(ASSISTANT):].removeprefix(" ")


def _hh_turns(prefix: str) -> list[dict]:
    parts = _TURN.split(prefix)  # ["", marker, text, marker, text, ...]; ends with a Human turn
    if parts[0]:
        raise RowError("chosen", "text before the first '\\n\\nHuman:' turn")
    messages = []
    for marker, text in zip(parts[1::2], parts[2::2]):
        content = text.removeprefix(" ")
        if not content.strip():
            raise RowError("chosen", f"turn {len(messages) + 1} ({marker.strip()}) is empty")
        messages.append({"role": "user" if marker == HUMAN else "assistant", "content": content})
    return messages


# ------------------------------------------------------------------------------------------------ statistics


def whitespace_words(text: str) -> int:
    """The default length: whitespace-separated words (no tokenizer needed)."""
    return len(text.split())


def length_stats(comparisons: Iterable[Comparison], count_tokens: Callable[[str], int] = whitespace_words) -> dict:
    """Lengths under `count_tokens`: {"n", "prompt", "response", "pair": {min, mean, p50, p95, max},
    "chosen_longer"}.

    "response" pools both responses of every pair; "pair" is prompt + the longer response (what a
    max_length must hold). A conversation prompt counts the sum of its contents (no chat-template
    tokens). "chosen_longer" is the fraction of A/B-labelled pairs whose chosen response is strictly
    longer (None without any): far above 0.5, a reward model can win by length alone.
    Percentiles interpolate linearly between ranks, as numpy.percentile's default.
    """
    lengths = _lengths(comparisons, count_tokens)
    if not lengths:
        raise ValueError("length_stats: no comparisons")
    prompts = [p for _, p, _, _ in lengths]
    responses = [r for _, _, a, b in lengths for r in (a, b)]
    labelled = [(a, b) if c.choice == "A" else (b, a) for c, _, a, b in lengths if c.choice in ("A", "B")]
    return {
        "n": len(lengths),
        "prompt": _summary(prompts),
        "response": _summary(responses),
        "pair": _summary([p + max(a, b) for _, p, a, b in lengths]),
        "chosen_longer": sum(w > l for w, l in labelled) / len(labelled) if labelled else None,
    }


def truncation_report(comparisons: Iterable[Comparison], count_tokens: Callable[[str], int], max_length: int) -> dict:
    """How many pairs `max_length` would cut: {"n", "max_length", "truncated", "fraction", "prompt_too_long"}.

    A pair is truncated when prompt + its longer response > max_length; "prompt_too_long" counts prompts
    of max_length or more, which leave no room for any response token (the pair then teaches nothing).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length: expected a positive integer, got {max_length!r}")
    lengths = _lengths(comparisons, count_tokens)
    if not lengths:
        raise ValueError("truncation_report: no comparisons")
    truncated = sum(p + max(a, b) > max_length for _, p, a, b in lengths)
    return {
        "n": len(lengths),
        "max_length": max_length,
        "truncated": truncated,
        "fraction": truncated / len(lengths),
        "prompt_too_long": sum(p >= max_length for _, p, _, _ in lengths),
    }


def _lengths(comparisons: Iterable[Comparison], count: Callable[[str], int]) -> list[tuple[Comparison, int, int, int]]:
    """(comparison, prompt length, response_a length, response_b length) of each comparison."""
    out = []
    for c in comparisons:
        texts = [c.prompt] if isinstance(c.prompt, str) else [m["content"] for m in c.prompt]
        out.append((c, sum(count(t) for t in texts), count(c.response_a), count(c.response_b)))
    return out


def _summary(values: list[int]) -> dict:
    s = sorted(values)
    return {"min": s[0], "mean": sum(s) / len(s), "p50": _percentile(s, 50), "p95": _percentile(s, 95), "max": s[-1]}


def _percentile(sorted_values: list[int], q: float) -> float:
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------------------ file I/O


def _dumps(row: dict, meta_field: str | None = None) -> str:
    try:
        line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RowError(meta_field or "<row>", f"not JSON-serialisable ({err})") from None
    # U+2028/2029 are line breaks to str.splitlines and some editors; escaped, a row stays one line
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _write_lines(path: str | Path, lines: list[str], what: str) -> None:
    if not lines:
        raise DataError(f"{path}: no {what} to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

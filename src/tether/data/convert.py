"""`tether data convert`: read any format of `tether.data.formats`, write another (JSONL, .jsonl.gz or Parquet).

The target decides what is read: comparisons for tether, trl, trl_conversational and hh; unpaired rows for
trl_unpaired; SFT conversations for messages and prompt_completion; prompts for prompts. What a target
cannot hold is skipped or changed and counted, never dropped silently: a tie or an unlabelled pair has no
chosen response for TRL or HH rows; HH has no system turn; a plain TRL file cannot hold a conversation
(trl writes conversational rows for every pair when any prompt is a conversation).
"""
from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tether.config import check
from tether.data.formats import KINDS, Loaded, check_format, describe, load
from tether.data.jsonl import RowError
from tether.data.preferences import _dumps, _parse_comparison, _trl_out, to_hh_row
from tether.data.sft_data import as_messages
from tether.data.unpaired import _unpaired_out, comparisons_to_unpaired
from tether.errors import DataError

__all__ = ["TARGETS", "ConvertConfig", "Target", "convert"]


class Target(NamedTuple):
    """A format `convert` writes."""

    kind: str
    """The kind of records it is written from (a key of tether.data.formats.KINDS)."""
    rows: Callable[[list, Counter], list[dict]]
    """The rows of those records; what is skipped or changed is counted under "skipped: ..."/"changed: ..."."""


def _tether_rows(comparisons: list, notes: Counter) -> list[dict]:
    return [_parse_comparison(c.to_dict()).to_dict() for c in comparisons]


def _labelled(comparisons: list, notes: Counter, target: str) -> list:
    """The pairs with a chosen response; ties and unlabelled pairs counted."""
    for c in comparisons:
        if c.choice not in ("A", "B"):
            notes[f"skipped: {'ties' if c.choice == 'tie' else 'unlabelled pairs'} (a {target} row needs a chosen "
                  "response)"] += 1
    return [c for c in comparisons if c.choice in ("A", "B")]


def _trl_rows(comparisons: list, notes: Counter, conversational: bool = False) -> list[dict]:
    pairs = _labelled(comparisons, notes, "TRL")
    conversational = conversational or any(not isinstance(c.prompt, str) for c in pairs)
    if conversational and any(isinstance(c.prompt, str) for c in pairs):
        notes["changed: plain prompts written as one user message (a TRL file is all plain or all "
              "conversational)"] += sum(isinstance(c.prompt, str) for c in pairs)
    return [_trl_out(c, conversational) for c in pairs]


def _hh_rows(comparisons: list, notes: Counter) -> list[dict]:
    rows = []
    for c in _labelled(comparisons, notes, "HH-RLHF"):
        try:
            rows.append(to_hh_row(c))
        except DataError as err:  # a system turn, or a turn marker inside a message
            notes[f"skipped: {err}"] += 1
    return rows


def _unpaired_rows(rows: list, notes: Counter) -> list[dict]:
    conversational = any(not isinstance(r.prompt, str) for r in rows)
    if conversational and any(isinstance(r.prompt, str) for r in rows):
        notes["changed: plain prompts written as one user message (a TRL file is all plain or all "
              "conversational)"] += sum(isinstance(r.prompt, str) for r in rows)
    return [_unpaired_out(r, conversational) for r in rows]


def _messages_rows(examples: list, notes: Counter) -> list[dict]:
    notes["changed: plain prompt/completion pairs written as [user, assistant] messages"] += \
        sum(isinstance(e, tuple) for e in examples)
    return [{"messages": as_messages(e)} for e in examples]


def _prompt_completion_rows(examples: list, notes: Counter) -> list[dict]:
    """A plain pair as strings; a conversation split before its last assistant message (TRL's conversational
    prompt-completion), whose earlier assistant messages join the prompt (no loss on them in TRL)."""
    rows = []
    for e in examples:
        if isinstance(e, tuple):
            rows.append({"prompt": e[0], "completion": e[1]})
            continue
        last = max(i for i, m in enumerate(e) if m["role"] == "assistant")
        if last == 0 or e[last - 1]["role"] == "assistant":
            notes["skipped: conversations without a user message before the last assistant message"] += 1
            continue
        notes["changed: conversations whose earlier assistant messages joined the prompt"] += \
            any(m["role"] == "assistant" for m in e[:last])
        notes["changed: messages after the last assistant message dropped"] += len(e) - last - 1
        rows.append({"prompt": e[:last], "completion": [e[last]]})
    return rows


TARGETS: dict[str, Target] = {
    "tether": Target("comparisons", _tether_rows),
    "trl": Target("comparisons", _trl_rows),
    "trl_conversational": Target("comparisons", lambda cs, notes: _trl_rows(cs, notes, conversational=True)),
    "hh": Target("comparisons", _hh_rows),
    "trl_unpaired": Target("unpaired", _unpaired_rows),
    "messages": Target("conversations", _messages_rows),
    "prompt_completion": Target("conversations", _prompt_completion_rows),
    "prompts": Target("prompts", lambda prompts, notes: [{"prompt": p} for p in prompts]),
}


@dataclass
class ConvertConfig:
    """`tether data convert in=FILE out=FILE [format=auto] [to=tether] [split=NAME]`."""

    input: str = ""
    """File or folder to read (typed `in=FILE`): JSONL (.gz too), .parquet, .arrow, or a save_to_disk folder."""
    out: str = ""
    """File to write: JSONL, .jsonl.gz (gzip) or .parquet."""
    format: str = "auto"
    """Format of the input; auto: told from its first row's keys (`tether data --help` lists them)."""
    to: str = "tether"
    """Format to write: tether, trl (plain, or conversational when any prompt is a conversation),
    trl_conversational, hh, trl_unpaired, messages, prompt_completion, prompts."""
    split: str | None = None
    """Split of a save_to_disk DatasetDict folder (e.g. train_prefs); None for a file."""

    def validate(self) -> None:
        check(bool(self.input), "in", "is required: the file or folder to read")
        check(bool(self.out), "out", "is required: the file to write")
        check(self.to in TARGETS, "to", f"must be one of {', '.join(TARGETS)}, got {self.to!r}")
        check_format(self.format, TARGETS[self.to].kind)
        check(Path(self.out).resolve() != Path(self.input).resolve(), "out", "is the input file; write elsewhere")
        check(Path(self.out).suffix.lower() not in (".csv", ".tsv", ".json", ".arrow", ".txt"), "out",
              f"{Path(self.out).suffix} is not written (nested rows do not fit it): use .jsonl, .jsonl.gz or .parquet")


def convert(cfg: ConvertConfig) -> dict:
    """Read cfg.input, write cfg.out in cfg.to; returns {"read": the load report, "written", "notes"}."""
    target = TARGETS[cfg.to]
    loaded: Loaded = load(cfg.input, target.kind, cfg.format, cfg.split)
    notes: Counter = Counter()
    try:
        rows = target.rows(loaded.items, notes)
    except RowError as bad:
        raise DataError(f"{cfg.out}: {bad}") from None
    if not rows:
        raise DataError(f"{cfg.out}: nothing to write as {cfg.to} ({describe(cfg.input, loaded, KINDS[target.kind])})")
    _write(Path(cfg.out), rows)
    noun = {"unpaired": "unpaired rows"}.get(target.kind, target.kind)
    return {"read": describe(cfg.input, loaded, noun), "report": loaded.report, "written": len(rows),
            "notes": {k: v for k, v in notes.items() if v}}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        _write_parquet(path, rows)
        return
    text = "".join(_dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        path.write_text(text, encoding="utf-8")


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow  # a dependency of `datasets`, imported only for Parquet
    import pyarrow.parquet

    # tether's meta is free-form: as a struct column Arrow would give every row every key (and fail on {})
    rows = [{**r, "meta": json.dumps(r["meta"], ensure_ascii=False)} if "meta" in r else r for r in rows]
    try:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    except (pyarrow.ArrowException, TypeError) as err:
        raise DataError(f"{path}: cannot write Parquet ({err}); rows whose fields differ in type (a plain and "
                        "a conversation prompt) fit JSONL only") from None

"""The data formats people already have (TRL, HH-RLHF, UltraFeedback, tether's own), read into tether's records.

A stage asks for one kind of data and names a `format` ("auto": told from the first row's keys, `detect`):

    comparisons     rm, dpo                    Comparison (tether.data.preferences)
    unpaired        dpo loss=kto               Unpaired (tether.data.unpaired); comparisons split in two rows
    conversations   sft                        a message list, or a plain (prompt, completion) tuple of strings
    prompts         ppo, grpo, rloo, collect   a string, or a message list

`FORMATS` lists every format with the row it reads and what it gives each kind. Rows come from JSONL,
Parquet, Arrow or `save_to_disk` folders (`tether.data.sources`). A malformed row is an error naming its
place and field (`data.jsonl:12: chosen: ...`, `data.parquet: row 11: chosen: ...`); a well-formed row with
nothing to learn from (an empty or duplicated reply: public HH-RLHF has four) is skipped and counted.
This module imports no torch (the rater app imports the data package) and `datasets` only for Arrow data.
"""
from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tether.config import check
from tether.data.corpus import _prompt_row
from tether.data.jsonl import RowError, SkipRow, json_kind
from tether.data.preferences import (
    Comparison,
    Prompt,
    _hh_row,
    _hh_split,
    _hh_turns,
    _parse_comparison,
    _prompt,
    _trl_row,
)
from tether.data.sft_data import Example, _messages, _parse_row, _require_assistant, _text
from tether.data.sources import Row, read_source
from tether.data.unpaired import Unpaired, _parse_unpaired, _unpaired_kind, comparisons_to_unpaired
from tether.errors import ConfigError, DataError

__all__ = ["FORMATS", "KINDS", "Format", "Loaded", "check_format", "describe", "detect", "format_names", "load",
           "load_comparisons", "load_conversations", "load_prompts", "load_unpaired"]

KINDS = {
    "comparisons": "comparisons (rm, dpo)",
    "unpaired": "unpaired thumbs-up/down rows (dpo loss=kto)",
    "conversations": "SFT conversations (sft)",
    "prompts": "prompts (ppo, grpo, rloo, collect)",
}


@dataclass(frozen=True)
class Format:
    """How one format's rows become each kind of record; a kind without its reader is read through `pairs`."""

    row: str
    """The row's shape, for help and errors."""
    prompt: Callable[[dict], Prompt]
    """A row's prompt."""
    pairs: Callable[[dict, dict], list[Comparison]] | None = None
    """A row (and its place, as provenance) as comparisons."""
    unpaired: Callable[[dict], Unpaired] | None = None
    """A row as one KTO row, for formats that hold them."""
    conversation: Callable[[dict], Example] | None = None
    """A row as one SFT example; None: the chosen response of each labelled pair."""
    shape: Callable[[dict], str] | None = None
    """"plain" or "conversational": every row of a file must have the first row's shape (TRL's rule)."""

    def reads(self, kind: str) -> bool:
        readers = {"comparisons": self.pairs, "unpaired": self.pairs or self.unpaired,
                   "conversations": self.pairs or self.conversation, "prompts": self.prompt}
        return readers[kind] is not None


# --------------------------------------------------------------------------------------- row readers


def _field_prompt(row: dict) -> Prompt:
    if "prompt" not in row:
        raise RowError("prompt", "missing")
    return _prompt(row["prompt"], "prompt")


def _example(prompt: Prompt, response: str) -> Example:
    """A plain prompt and its response as a tuple (see tether.data.sft_data); a conversation as messages."""
    if isinstance(prompt, str):
        return (prompt, response)
    return [*prompt, {"role": "assistant", "content": response}]


def _tether_pairs(row: dict, at: dict) -> list[Comparison]:
    if isinstance(row.get("meta"), str):  # Parquet written by `tether data convert` holds meta as JSON text
        try:
            row = {**row, "meta": json.loads(row["meta"])}
        except json.JSONDecodeError as err:
            raise RowError("meta", f"a string that is not a JSON object ({err.msg})") from None
    return [_parse_comparison(row)]


def _trl_pairs(row: dict, at: dict) -> list[Comparison]:
    if "prompt" in row:
        return [_trl_row(row)[0]]
    prompt, chosen, rejected = _conversation_pair(row)  # TRL's implicit prompt: the messages both share
    return [Comparison(prompt, chosen, rejected, choice="A")]


def _trl_shape(row: dict) -> str:
    return "conversational" if isinstance(row.get("prompt", row.get("chosen")), list) else "plain"


def _trl_prompt(row: dict) -> Prompt:
    return _field_prompt(row) if "prompt" in row else _conversation_pair(row)[0]


def _final_reply(value, name: str) -> list[dict]:
    """A conversation ending with an assistant reply; SkipRow if that reply is blank."""
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of messages (or give 'prompt'), got {json_kind(value)}")
    last = value[-1] if value else None
    if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), str) \
            and not last["content"].strip():
        raise SkipRow(f"{name}[{len(value) - 1}].content", "empty final assistant reply")
    messages = _messages(value, name)
    if messages[-1]["role"] != "assistant":
        raise RowError(f"{name}[{len(messages) - 1}].role", "the conversation must end with an assistant reply")
    return messages


def _conversation_pair(row: dict) -> tuple[list[dict], str, str]:
    """(the messages chosen and rejected share, chosen's final reply, rejected's final reply)."""
    for name in ("chosen", "rejected"):
        if name not in row:
            raise RowError(name, "missing")
    chosen, rejected = _final_reply(row["chosen"], "chosen"), _final_reply(row["rejected"], "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("rejected", "differs from chosen before the final assistant reply (no shared prompt)")
    prompt = chosen[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("chosen", "no user message before the final assistant reply")
    a, b = chosen[-1]["content"], rejected[-1]["content"]
    if a.strip() == b.strip():
        raise SkipRow("rejected", "final assistant reply identical to chosen's")
    return prompt, a, b


def _hh_pairs(row: dict, at: dict) -> list[Comparison]:
    c = _hh_row(row, 0)
    c.meta = {"source": "hh-rlhf", **at}
    return [c]


def _hh_chosen(row: dict) -> tuple[list[dict], str]:
    """(the prompt turns, the final reply) of the chosen dialogue."""
    if "chosen" not in row:
        raise RowError("chosen", "missing")
    if not isinstance(row["chosen"], str):
        raise RowError("chosen", f"expected a string, got {json_kind(row['chosen'])}")
    prefix, reply = _hh_split(row["chosen"], "chosen")
    return _hh_turns(prefix), reply


def _hh_prompt(row: dict) -> Prompt:
    return _hh_chosen(row)[0]


def _hh_conversation(row: dict) -> Example:
    turns, reply = _hh_chosen(row)
    if not reply.strip():
        raise SkipRow("chosen", "empty final assistant reply")
    return [*turns, {"role": "assistant", "content": reply}]


def _score(row: dict, name: str) -> float | None:
    value = row.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise RowError(name, f"expected a number, got {json_kind(value)}")
    return value


def _ufb_pairs(row: dict, at: dict) -> list[Comparison]:
    prompt, chosen, rejected = _conversation_pair(row)
    meta = {"source": "ultrafeedback_binarized", **at, "score_a": _score(row, "score_chosen"),
            "score_b": _score(row, "score_rejected")}
    if isinstance(row.get("prompt_id"), str):
        meta["prompt_id"] = row["prompt_id"]
    # one user turn, as the dataset's own `prompt` column: a plain prompt, rendered with or without a template
    return [Comparison(prompt[0]["content"] if len(prompt) == 1 else prompt, chosen, rejected, choice="A", meta=meta)]


def _ufb_prompt(row: dict) -> Prompt:
    if "prompt" in row:
        _text(row["prompt"], "prompt")
        return row["prompt"]
    prompt = _conversation_pair(row)[0]
    return prompt[0]["content"] if len(prompt) == 1 else prompt


def _ufb_conversation(row: dict) -> Example:
    if "chosen" not in row:
        raise RowError("chosen", "missing")
    return _final_reply(row["chosen"], "chosen")


def _uf_prompt(row: dict) -> str:
    if "instruction" not in row:
        raise RowError("instruction", "missing")
    _text(row["instruction"], "instruction")
    return row["instruction"]


def _uf_pairs(row: dict, at: dict) -> list[Comparison]:
    """openbmb/UltraFeedback: the best-scored completion (the first of equal bests) against each completion
    scored strictly lower, in the row's order; a completion without a response or a finite overall_score is
    left out. The scores go in meta (score_a, score_b), the models that wrote them in source_a/source_b."""
    prompt = _uf_prompt(row)
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise RowError("completions", f"expected a list, got {json_kind(completions)}")
    scored = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict):
            raise RowError(f"completions[{i}]", f"expected an object, got {json_kind(c)}")
        response, score = c.get("response"), _score(c, "overall_score")
        if response is not None and not isinstance(response, str):
            raise RowError(f"completions[{i}].response", f"expected a string, got {json_kind(response)}")
        if response and response.strip() and score is not None and math.isfinite(score):
            scored.append((score, response, c.get("model") if isinstance(c.get("model"), str) else None))
    if not scored:
        raise SkipRow("completions", "no completion with a response and an overall_score")
    top, best, model = max(scored, key=lambda s: s[0])  # max keeps the first of equal bests
    pairs = [Comparison(prompt, best, response, choice="A", source_a=model, source_b=other,
                        meta={"source": "ultrafeedback", **at, "score_a": top, "score_b": score})
             for score, response, other in scored if score < top and response.strip() != best.strip()]
    if not pairs:
        left = len(completions) - len(scored)
        raise SkipRow("completions", "no completion scored below the best" + (
            f" ({left} of {len(completions)} left out: no response or no overall_score)" if left else ""))
    return pairs


def _unpaired_example(row: dict) -> Example:
    u = _parse_unpaired(row)
    if not u.label:
        raise SkipRow("label", "false (an undesirable completion is no SFT target)")
    return _example(u.prompt, u.completion)


def _messages_prompt(row: dict) -> Prompt:
    """The conversation before its last assistant message."""
    if "messages" not in row:
        raise RowError("messages", "missing")
    messages = _messages(row["messages"], "messages")
    _require_assistant(messages, "messages")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if not last or messages[last - 1]["role"] != "user":
        raise RowError("messages", "no user message before the last assistant message")
    return messages[:last]


FORMATS: dict[str, Format] = {
    "tether": Format('{"prompt", "response_a", "response_b", "choice", ...} (tether.data.preferences)',
                     _field_prompt, pairs=_tether_pairs),
    "trl": Format('{"prompt", "chosen", "rejected"}: strings, or messages with one assistant message each; '
                  'or {"chosen": [msgs], "rejected": [msgs]} (implicit prompt: the messages both share)',
                  _trl_prompt, pairs=_trl_pairs, shape=_trl_shape),
    "hh": Format('{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...} (Anthropic HH-RLHF); '
                 "the prompt is the dialogue before the final Assistant turn", _hh_prompt, pairs=_hh_pairs,
                 conversation=_hh_conversation),
    "ultrafeedback_binarized": Format(
        '{"prompt", "chosen": [user, assistant], "rejected": [...], "score_chosen", "score_rejected"} '
        "(HuggingFaceH4/ultrafeedback_binarized); SFT takes the chosen messages",
        _ufb_prompt, pairs=_ufb_pairs, conversation=_ufb_conversation),
    "ultrafeedback": Format(
        '{"instruction", "completions": [{"response", "overall_score", "model"}, ...]} (openbmb/UltraFeedback): '
        "the best-scored completion against each one scored strictly lower", _uf_prompt, pairs=_uf_pairs),
    "trl_unpaired": Format('{"prompt", "completion", "label": true|false} (TRL unpaired, KTO); SFT takes label '
                           "true rows", _field_prompt, unpaired=_parse_unpaired, conversation=_unpaired_example,
                           shape=_unpaired_kind),
    "messages": Format('{"messages": [...]} (tether SFT rows; a file may mix them with prompt/completion rows)',
                       _messages_prompt, conversation=_parse_row),
    "prompt_completion": Format('{"prompt", "completion"}: strings (a plain pair) or messages (tether SFT rows)',
                                _field_prompt, conversation=_parse_row),
    "prompts": Format('{"prompt": str or messages} (other keys ignored)', _prompt_row),
}


# ------------------------------------------------------------------------------------------- detection


def format_names(kind: str) -> tuple[str, ...]:
    """The `format=` values a kind of data accepts, "auto" first."""
    return ("auto", *(name for name, f in FORMATS.items() if f.reads(kind)))


def check_format(value: str, kind: str) -> None:
    """ConfigError `format: must be one of ...` unless `value` names a format of `kind` (for a stage's validate)."""
    names = format_names(kind)
    check(value in names, "format", f"must be one of {', '.join(names)} for {KINDS[kind]}, got {value!r}")


def detect(row: dict, kind: str) -> list[str]:
    """The formats whose keys the row has (one when it can be told; none or several otherwise).

    Checked in this order, each on the row's keys (and HH's string dialogues): response_a/response_b ->
    tether; instruction/completions -> ultrafeedback; chosen/rejected with score_chosen/score_rejected ->
    ultrafeedback_binarized, as strings without a prompt -> hh, else -> trl; label -> trl_unpaired; completion ->
    prompt_completion; messages -> messages; a lone prompt -> prompts (prompt_completion for SFT, whose
    reader then names the missing completion).
    """
    keys = set(row)
    found = []
    if keys & {"response_a", "response_b"}:
        found.append("tether")
    if keys & {"instruction", "completions"}:
        found.append("ultrafeedback")
    if keys & {"chosen", "rejected"}:
        if keys & {"score_chosen", "score_rejected"}:
            found.append("ultrafeedback_binarized")
        elif "prompt" not in keys and isinstance(row.get("chosen", row.get("rejected")), str):
            found.append("hh")
        else:
            found.append("trl")
    if "label" in keys:
        found.append("trl_unpaired")
    elif "completion" in keys:
        found.append("prompt_completion")
    if "messages" in keys and "ultrafeedback_binarized" not in found:  # ultrafeedback_binarized has messages too
        found.append("messages")
    if not found and "prompt" in keys:
        found.append("prompt_completion" if kind == "conversations" else "prompts")
    return found


def _detect(rows: list[Row], path, kind: str) -> str:
    found = detect(rows[0].data, kind)
    keys = ", ".join(list(rows[0].data)[:12]) or "none"
    names = ", ".join(format_names(kind)[1:])
    if not found:
        raise DataError(f"{path}: cannot tell the format from the first row's keys ({keys}); "
                        f"set format= to one of: {names}")
    if len(found) > 1:
        raise DataError(f"{path}: the first row's keys ({keys}) fit several formats ({', '.join(found)}); "
                        f"set format= to one of: {names}")
    if not FORMATS[found[0]].reads(kind):
        raise DataError(f"{path}: the rows look like {found[0]} ({', '.join(rows[0].data)}), which hold no "
                        f"{KINDS[kind]}; the formats that do: {names}")
    return found[0]


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class Loaded:
    """What `load` read: the records, where each came from, and counts of what was left out."""

    items: list
    """The records, in the source's order (a row may give several, or none)."""
    wheres: list[str]
    """Each record's row ("file:LINE" or "file: row N")."""
    format: str
    """The format read (as given, or detected)."""
    report: dict = field(default_factory=dict)
    """{"format", "shape" (plain or conversational, for TRL files), "file_rows", "skipped_rows", "skipped":
    {reason: rows}, and what the kind dropped: ties_dropped (unpaired), no_chosen_response, duplicates_dropped}."""


def load(path: str | Path, kind: str, format: str = "auto", split: str | None = None) -> Loaded:
    """Read the `kind` records of the file or folder at `path` (`tether.data.sources`) in `format`.

    Raises DataError at the first malformed row (its place and field), ConfigError for a format the kind
    cannot read. Rows with nothing to learn from are skipped and counted in the report.
    """
    if format not in format_names(kind):
        raise ConfigError(f"format: must be one of {', '.join(format_names(kind))} for {KINDS[kind]}, got {format!r}")
    rows = read_source(path, split)
    name = _detect(rows, path, kind) if format == "auto" else format
    fmt, counts = FORMATS[name], Counter()
    read = _READERS[kind]
    items, wheres, skipped, first = [], [], Counter(), None
    for row in rows:
        try:
            if fmt.shape:
                shape = fmt.shape(row.data)
                first = first or (shape, " ".join(f"{k} {v}" for k, v in row.at.items()))  # "line 1", "row 0"
                if shape != first[0]:
                    raise RowError("prompt", f"a {shape} row in a file whose first row ({first[1]}) is {first[0]}")
            got = read(fmt, row, counts)
        except SkipRow as skip:
            skipped[str(skip)] += 1
            continue
        except RowError as bad:
            raise DataError(f"{row.where}: {bad}") from None
        items += got
        wheres += [row.where] * len(got)
    report = {"format": name, **({"shape": first[0]} if first else {}), "file_rows": len(rows),
              "skipped_rows": sum(skipped.values()), "skipped": dict(skipped), **counts}
    loaded = Loaded(items, wheres, name, report)
    if (kind == "conversations" and fmt.conversation is None) or (kind == "prompts" and name != "prompts"):
        _distinct(loaded)
    if not loaded.items:
        raise DataError(f"{path}: no {KINDS[kind]} in {len(rows)} rows of {name} ({_skips(report)})")
    return loaded


def _comparisons(fmt: Format, row: Row, counts: Counter) -> list[Comparison]:
    return fmt.pairs(row.data, row.at)


def _unpaired(fmt: Format, row: Row, counts: Counter) -> list[Unpaired]:
    if fmt.unpaired:
        return [fmt.unpaired(row.data)]
    out = []
    for c in fmt.pairs(row.data, row.at):
        if c.choice is None:
            raise RowError("choice", "null (an unrated queue item): KTO trains on labelled rows only")
        counts["ties_dropped"] += c.choice == "tie"  # a tie labels neither response good or bad
        out += comparisons_to_unpaired([c])[0]
    return out


def _conversations(fmt: Format, row: Row, counts: Counter) -> list[Example]:
    if fmt.conversation:
        return [fmt.conversation(row.data)]
    out = []
    for c in fmt.pairs(row.data, row.at):
        if c.choice in ("A", "B"):
            out.append(_example(c.prompt, c.chosen))
        else:
            counts["no_chosen_response"] += 1  # a tie or an unlabelled pair
    return out


def _prompts(fmt: Format, row: Row, counts: Counter) -> list[Prompt]:
    return [fmt.prompt(row.data)]


_READERS = {"comparisons": _comparisons, "unpaired": _unpaired, "conversations": _conversations,
            "prompts": _prompts}


def _distinct(loaded: Loaded) -> None:
    """Keep the first of equal records (the prompt of several pairs, the chosen response of several pairs)."""
    seen, items, wheres = set(), [], []
    for item, where in zip(loaded.items, loaded.wheres):
        k = json.dumps(item, ensure_ascii=False, sort_keys=True)
        if k not in seen:
            seen.add(k)
            items.append(item)
            wheres.append(where)
    loaded.report["duplicates_dropped"] = len(loaded.items) - len(items)
    loaded.items, loaded.wheres = items, wheres


def _skips(report: dict) -> str:
    if not report["skipped"]:
        return "none skipped"
    reasons = "; ".join(f"{reason}: {n}" for reason, n in report["skipped"].items())
    return f"{report['skipped_rows']} skipped: {reasons}"


def describe(path: str | Path, loaded: Loaded, what: str) -> str:
    """One line: what was read from how many rows, in which format, and what was left out."""
    r = loaded.report
    dropped = [f"{r[k]} {k.replace('_', ' ')}" for k in ("duplicates_dropped", "ties_dropped", "no_chosen_response")
               if r.get(k)]
    return (f"{path}: {len(loaded.items):,} {what} from {r['file_rows']:,} rows of {loaded.format} "
            f"({_skips(r)}{''.join('; ' + d for d in dropped)})")


def _note(path, loaded: Loaded, what: str) -> None:
    """Say on stderr what a load left out, if anything (nothing is dropped silently)."""
    r = loaded.report
    if r["skipped_rows"] or any(r.get(k) for k in ("duplicates_dropped", "ties_dropped", "no_chosen_response")):
        print(f"data: {describe(path, loaded, what)}", file=sys.stderr)


# ------------------------------------------------------------------------------------- what stages call


def load_comparisons(path: str | Path, format: str = "auto", split: str | None = None,
                     labelled: bool = False) -> list[Comparison]:
    """Comparisons (rm, dpo); labelled=True: an unlabelled row is an error naming it (DPO learns from labels)."""
    loaded = load(path, "comparisons", format, split)
    unlabelled = [w for c, w in zip(loaded.items, loaded.wheres) if c.choice is None]
    if labelled and unlabelled:
        raise DataError(f"{unlabelled[0]}: choice: null (an unrated queue item; {len(unlabelled)} in the "
                        "file): DPO trains on labelled rows only; rate them (`tether label`) or remove them")
    _note(path, loaded, "comparisons")
    return loaded.items


def load_unpaired(path: str | Path, format: str = "auto", split: str | None = None) -> tuple[list[Unpaired], dict]:
    """KTO rows and a report (format, file_rows, ties_dropped, desirable, undesirable, skipped rows)."""
    loaded = load(path, "unpaired", format, split)
    _note(path, loaded, "rows")
    rows = loaded.items
    report = {"ties_dropped": 0, **loaded.report, "desirable": sum(r.label for r in rows),
              "undesirable": sum(not r.label for r in rows)}
    return rows, report


def load_conversations(path: str | Path, format: str = "auto", split: str | None = None) -> list[Example]:
    """SFT examples: message lists, and plain (prompt, completion) tuples (tether.data.sft_data)."""
    loaded = load(path, "conversations", format, split)
    _note(path, loaded, "conversations")
    return loaded.items


def load_prompts(path: str | Path, format: str = "auto", split: str | None = None) -> list[Prompt]:
    """Prompts: strings and message lists; from a data set of responses, each distinct prompt once."""
    loaded = load(path, "prompts", format, split)
    _note(path, loaded, "prompts")
    return loaded.items

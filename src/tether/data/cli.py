"""`tether data SUB-COMMAND [key=value ...]`: data files on the command line.

Sub-commands live in `SUBCOMMANDS` (name -> function of the remaining arguments, and a summary): adding
one is a function and a line there. Errors are TetherErrors, printed as `error: ...` by `tether.cli.main`.
"""
from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from tether.config import config_help, load_config
from tether.data.formats import FORMATS, KINDS, format_names
from tether.errors import TetherError

__all__ = ["SUBCOMMANDS", "SubCommand", "main"]


class DataCliError(TetherError):
    """A bad `tether data` command line."""


class SubCommand(NamedTuple):
    run: Callable[[list[str]], int]
    """Takes the arguments after the sub-command's name; returns the exit status."""
    summary: str
    """One line for `tether data --help`."""


def convert_main(args: list[str]) -> int:
    from tether.data.convert import ConvertConfig, convert

    if any(a in ("-h", "--help") for a in args):
        print(f"usage: tether data convert in=FILE out=FILE [format=auto] [to=tether] [split=NAME]\n\n"
              f"{SUBCOMMANDS['convert'].summary}\n\nsettings:\n{config_help(ConvertConfig)}\n\n{formats_help()}")
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        raise DataCliError(f"tether data convert: expected key=value, got {bad[0]!r}; "
                           "usage: tether data convert in=FILE out=FILE [format=auto] [to=tether] [split=NAME]")
    # `in` is what people type, but a Python keyword: the config field is `input`
    overrides = ["input" + a[2:] if a.startswith("in=") else a for a in args]
    cfg = load_config(ConvertConfig, None, overrides)
    result = convert(cfg)
    print(f"read {result['read']}")
    print(f"wrote {result['written']:,} {cfg.to} rows to {cfg.out}")
    for note, n in result["notes"].items():
        print(f"  {note}: {n:,}")
    return 0


def preview_main(args: list[str]) -> int:
    from tether.data.preview import PreviewConfig, preview

    usage = "usage: tether data preview data=FILE model=FOLDER [stage=sft] [chat_template=] [max_length=256] [rows=3]"
    if any(a in ("-h", "--help") for a in args):
        print(f"{usage}\n\n{SUBCOMMANDS['preview'].summary}\n\nsettings:\n{config_help(PreviewConfig)}")
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        raise DataCliError(f"tether data preview: expected key=value, got {bad[0]!r}; {usage}")
    print(preview(load_config(PreviewConfig, None, args), colour=sys.stdout.isatty()))
    return 0


SUBCOMMANDS: dict[str, SubCommand] = {
    "convert": SubCommand(convert_main, "Convert a data file between formats (tether, TRL, HH-RLHF, UltraFeedback, "
                                        "SFT rows, prompts; JSONL, Parquet, Arrow, save_to_disk folders)."),
    "preview": SubCommand(preview_main, "Show the first rows exactly as a stage trains on them: the model's chat "
                                        "template, trained tokens marked, what truncation cut."),
}


def formats_help() -> str:
    """The formats, the row each reads, and which kinds of data each gives."""
    lines = ["formats (format=NAME; auto tells them apart by the first row's keys):"]
    for name, f in FORMATS.items():
        kinds = ", ".join(k for k in KINDS if f.reads(k))
        lines += [f"  {name}  ->  {kinds}", f"      {f.row}"]
    lines += ["", "kinds of data:"] + [f"  {k}: {v}; format= one of {', '.join(format_names(k))}"
                                       for k, v in KINDS.items()]
    return "\n".join(lines)


def top_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: tether data SUB-COMMAND [key=value ...]", "", "sub-commands:"]
    lines += [f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", "Run 'tether data SUB-COMMAND --help' for its settings.", "", formats_help()]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(top_help(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataCliError(f"tether data: unknown sub-command {name!r}{hint}; sub-commands: {', '.join(SUBCOMMANDS)}")
    return SUBCOMMANDS[name].run(rest)

"""A constitution: a versioned YAML file of principles that an AI judge (and `tether cai`) works under.

    name: my-constitution            optional
    version: "3"                     required; recorded on every label (as rater labels record their guideline version)
    description: ...                 optional
    pairwise_template: ...           optional; the judge's prompt, with {conversation} {question} {response_a}
                                     {response_b} (default: PAIRWISE_TEMPLATE)
    principles:                      required, at least one
      - id: harmless                 required: letters, digits, _ and -, unique
        critique: ...                required: the critique request (Bai et al. 2022, sec. 3)
        revision: ...                required: the revision request
        question: ...                required: the pairwise question (Bai et al. 2022, sec. 4)
        source: ...                  optional: where the texts come from

Read strictly, as tether reads data: an unknown or repeated key, a missing or empty field, a value of the wrong type
or a template placeholder out of place stops with `file:line: field: problem`. The version is kept as written
(`version: 1.10` stays "1.10", not the float 1.1). The default constitution ships with tether
(`constitutions/default.yaml`). This module imports no torch.
"""
from __future__ import annotations

import difflib
import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from tether.errors import DataError

__all__ = ["DEFAULT", "PAIRWISE_TEMPLATE", "Constitution", "Principle", "conversation_text", "load_constitution"]

DEFAULT = Path(__file__).resolve().parent / "constitutions" / "default.yaml"
"""The constitution `tether judge` reads when its `constitution` setting is empty."""

# Bai et al. 2022 sec. 4.1 put the conversation first, then the principle, then the two options; the answer is one
# letter, so a judge's next-token probabilities of "A" and "B" are its preference (no sampling needed).
PAIRWISE_TEMPLATE = """Consider the following conversation between a user and an assistant.

{conversation}

{question}

Response A: {response_a}

Response B: {response_b}

Answer with A or B."""
PLACEHOLDERS = ("conversation", "question", "response_a", "response_b")
ID_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Principle:
    """One principle of a constitution."""

    id: str
    critique: str
    """The critique request: asks the model to find what is wrong with its last response under this principle."""
    revision: str
    """The revision request: asks the model to rewrite its response to fix what the critique found."""
    question: str
    """The pairwise question a judge answers with A or B."""
    source: str = ""


@dataclass(frozen=True)
class Constitution:
    """A loaded, validated constitution."""

    version: str
    principles: tuple[Principle, ...]
    name: str = ""
    description: str = ""
    pairwise_template: str = PAIRWISE_TEMPLATE
    path: str = ""
    sha256: str = ""
    """Of the file's bytes: tells two files apart that claim the same version."""

    def principle(self, id: str) -> Principle:
        return next(p for p in self.principles if p.id == id)

    def pairwise_prompt(self, principle: Principle, prompt: str | list, first: str, second: str) -> str:
        """The judge's prompt: the conversation, the principle's question, `first` as A and `second` as B."""
        return self.pairwise_template.format(conversation=conversation_text(prompt), question=principle.question,
                                             response_a=first, response_b=second)


def conversation_text(prompt: str | list) -> str:
    """A plain prompt or a message list as "User: ..." / "Assistant: ..." lines."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


# ---------------------------------------------------------------------------------------------- loading

TOP_FIELDS = {"name": False, "version": True, "description": False, "pairwise_template": False, "principles": True}
PRINCIPLE_FIELDS = {"id": True, "critique": True, "revision": True, "question": True, "source": False}
"""Field -> required."""


class _Reader:
    """Typed access to the nodes of one YAML file, every error naming `file:line: field`."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, node: yaml.Node, field: str, problem: str) -> DataError:
        return DataError(f"{self.path}:{node.start_mark.line + 1}: {field}: {problem}")

    def fields(self, node: yaml.Node, where: str, allowed: dict[str, bool]) -> dict[str, yaml.Node]:
        """The mapping's values by key; unknown, repeated and missing required keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, where or "<document>", f"expected a mapping, got {_kind(node)}")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            field = f"{where}.{name}" if where else name
            if name not in allowed:
                close = difflib.get_close_matches(name, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(key, field, f"unknown field{hint}; allowed: {', '.join(allowed)}")
            if name in out:
                raise self.error(key, field, f"given twice (first at line {out[name].start_mark.line + 1})")
            out[name] = value
        for name, required in allowed.items():
            if required and name not in out:
                raise self.error(node, f"{where}.{name}" if where else name, "missing")
        return out

    def text(self, node: yaml.Node, field: str, any_scalar: bool = False) -> str:
        """A non-blank string; with `any_scalar`, a number or a date is taken as written (for the version)."""
        plain = isinstance(node, yaml.ScalarNode) and (node.tag == "tag:yaml.org,2002:str" or (
            any_scalar and node.tag not in ("tag:yaml.org,2002:null", "tag:yaml.org,2002:bool")))
        if not plain:
            raise self.error(node, field, f"expected a string, got {_kind(node)}")
        if not node.value.strip():
            raise self.error(node, field, "empty")
        return node.value.strip() if any_scalar else node.value


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    kinds = {"null": "null", "bool": "a boolean", "int": "a number", "float": "a number", "str": "a string"}
    return kinds.get(node.tag.rsplit(":", 1)[-1], node.tag)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The constitution at `path` (None or "": the default shipped with tether), validated; DataError otherwise."""
    path = Path(path) if path else DEFAULT
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a constitution YAML file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark else ""
        raise DataError(f"{path}:{line} <yaml>: {getattr(err, 'problem', None) or err}") from None
    if root is None:
        raise DataError(f"{path}:1: <document>: empty, expected a mapping with version and principles")
    return _constitution(_Reader(path), root, raw)


def _constitution(r: _Reader, root: yaml.Node, raw: bytes) -> Constitution:
    top = r.fields(root, "", TOP_FIELDS)
    template = PAIRWISE_TEMPLATE
    if "pairwise_template" in top:
        template = r.text(top["pairwise_template"], "pairwise_template")
        _check_template(r, top["pairwise_template"], template)
    items = top["principles"]
    if not isinstance(items, yaml.SequenceNode):
        raise r.error(items, "principles", f"expected a list of principles, got {_kind(items)}")
    if not items.value:
        raise r.error(items, "principles", "empty: give at least one principle")
    principles, seen = [], {}
    for i, node in enumerate(items.value):
        where = f"principles[{i}]"
        f = r.fields(node, where, PRINCIPLE_FIELDS)
        pid = r.text(f["id"], f"{where}.id")
        if not ID_RE.fullmatch(pid):
            raise r.error(f["id"], f"{where}.id", f"{pid!r}: use letters, digits, _ and - only")
        if pid in seen:
            raise r.error(f["id"], f"{where}.id", f"{pid!r} repeats principles[{seen[pid]}].id")
        seen[pid] = i
        texts = {k: r.text(f[k], f"{where}.{k}").strip() for k in ("critique", "revision", "question")}
        source = r.text(f["source"], f"{where}.source").strip() if "source" in f else ""
        principles.append(Principle(pid, source=source, **texts))
    optional = {k: r.text(top[k], k).strip() for k in ("name", "description") if k in top}
    return Constitution(r.text(top["version"], "version", any_scalar=True), tuple(principles),
                        pairwise_template=template, path=str(r.path), sha256=hashlib.sha256(raw).hexdigest(),
                        **optional)


def _check_template(r: _Reader, node: yaml.Node, template: str) -> None:
    """Every placeholder exactly once at least, none other, braces balanced (`{{` for a literal brace)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise r.error(node, "pairwise_template", f"{err} (write {{{{ and }}}} for literal braces)") from None
    for name in names:
        if name not in PLACEHOLDERS:
            raise r.error(node, "pairwise_template", f"unknown placeholder {{{name}}}; allowed: "
                          + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    for name in PLACEHOLDERS:
        if name not in names:
            raise r.error(node, "pairwise_template", f"missing placeholder {{{name}}}")

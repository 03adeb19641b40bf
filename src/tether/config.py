"""Typed stage configs: dataclass defaults, then a YAML file, then `key=value` overrides, then `validate()`.

A stage config is a plain `@dataclass` with a docstring under each field (CleanRL style); a class attribute
`RENAMED: ClassVar[dict[str, str]]` (old name -> new) makes an old field name an error that names the new one:

    @dataclass
    class SFTConfig:
        \"\"\"Supervised fine-tuning.\"\"\"
        lr: float = 1e-3
        \"\"\"Peak learning rate of AdamW.\"\"\"
        def validate(self) -> None:
            check(self.lr > 0, "lr", "must be > 0")

Values are coerced by annotation: int, float, bool, str, `X | None`, `Literal[...]`, `list[X]`,
`tuple[X, ...]` and nested dataclasses (dotted override keys: `optim.lr=3e-4`). Every mistake raises
`ConfigError` naming the field and what is allowed, e.g. `SFTConfig.lr: expected a float, got 'abc'`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from tether.errors import ConfigError

__all__ = [
    "check",
    "check_prompt_limit",
    "config_from_dict",
    "config_help",
    "field_docs",
    "load_config",
    "save_config",
    "validate_config",
]

T = TypeVar("T")

_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_NULLS = {"null", "none"}


class _Text(str):
    """An override's raw text. Only typed-in text may spell None as "null"/"none": in YAML a quoted
    'null' is a real string, and `save_config` must round-trip it."""


def check(condition: object, field: str, message: str) -> None:
    """Raise `ConfigError("field: message")` unless `condition` holds; for use in `validate()`.

    `load_config` prefixes the class name, so the user reads `SFTConfig.lr: must be > 0`.
    """
    if not condition:
        raise ConfigError(f"{field}: {message}")


def check_prompt_limit(value: int | None, field: str = "max_prompt_length") -> None:
    """`check` of an optional token limit (None: no limit; else at least 1 token)."""
    check(value is None or (isinstance(value, int) and value >= 1), field, "must be >= 1 or null")


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, then the YAML mapping at `path`, then `key=value` overrides.

    Later sources win field by field; nested dataclasses merge (a YAML `optim: {lr: 1}` keeps the
    other `optim` defaults). Runs `validate()` on nested configs first, then on `cls`.
    """
    if isinstance(overrides, str):  # a lone "lr=1" would otherwise be iterated letter by letter
        overrides = (overrides,)
    source = f"config file {path}" if path is not None else "config"
    data = _read_yaml(path) if path is not None else {}
    _require_mapping(data, source)
    if path is not None:
        _check_file_keys(cls, data, cls.__name__, path)
    for text in overrides:
        _apply_override(cls, data, text)
    return config_from_dict(cls, data, source=source)


def config_from_dict(cls: type[T], mapping: Mapping[str, Any], source: str = "config") -> T:
    """Build and validate `cls` from a (possibly nested) mapping of field names to values."""
    _require_mapping(mapping, source)
    cfg = _build(cls, dict(mapping), cls.__name__, base=None)
    validate_config(cfg)
    return cfg


def validate_config(cfg: Any, where: str | None = None) -> None:
    """Run `validate()` on every nested dataclass (innermost first), then on `cfg` itself.

    A `ConfigError("lr: must be > 0")` from `validate()` is re-raised as `Outer.inner.lr: must be > 0`.
    """
    where = where or type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, f"{where}.{f.name}")
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as err:
            raise ConfigError(f"{where}.{err}") from None


def _read_yaml(path: str | Path) -> Any:
    """The parsed YAML document at `path` ({} for an empty file); errors name the file."""
    where = f"config file {path}"
    try:
        text = Path(path).read_bytes().decode("utf-8")  # no newline translation: YAML reads \r\n itself
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not valid UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None
    return {} if data is None else data


def _require_mapping(data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: not a mapping (got {_kind(data)})")


def _apply_override(cls: type, data: dict, text: str) -> None:
    """Store `key=value` into the nested dict `data`, checking each dotted part against `cls`."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. lr=3e-4 or optim.lr=3e-4")
    parts = key.split(".")
    node, klass, where = data, cls, cls.__name__
    for part in parts[:-1]:
        known = _settable(klass)
        if part not in known:
            raise _unknown_field(where, part, known, klass)
        inner = _dataclass_in(_hints(klass)[part])
        if inner is None:
            kind = _type_name(_hints(klass)[part])
            raise ConfigError(f"{where}.{part}: has no fields (it is {kind}), so {key!r} cannot be set")
        if not isinstance(node.get(part), dict):  # absent, or null in YAML: start from the defaults
            node[part] = {}
        node, klass, where = node[part], inner, f"{where}.{part}"
    node[parts[-1]] = _Text(value.strip())


def _build(cls: type, mapping: Any, where: str, base: Any) -> Any:
    """An instance of dataclass `cls`: `base` (or the defaults) with the fields in `mapping` replaced."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a mapping of its fields, got {mapping!r}")
    known, hints = _settable(cls), _hints(cls)
    kwargs = {}
    for key, value in mapping.items():
        name = str(key)
        if name not in known:
            raise _unknown_field(where, name, known, cls)
        inner_base = getattr(base, name) if base is not None else _default(known[name])
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}", inner_base)
    if base is None:
        missing = [n for n, f in known.items() if n not in kwargs and _default(f) is dataclasses.MISSING]
        if missing:
            names = ", ".join(repr(n) for n in missing)
            raise ConfigError(f"{where}: missing required field{'s' * (len(missing) > 1)} {names}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as err:  # raised by a __post_init__ through `check`
        raise ConfigError(f"{where}.{err}") from None


# ---------------------------------------------------------------------------------------------
# Coercion by annotation


def _coerce(value: Any, tp: Any, where: str, base: Any = None) -> Any:
    """`value` (YAML-typed, or override text) converted to annotation `tp`, or a ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_optional(value, tp, where, base)
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(tp), where)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, where, base)
    if tp in _SCALARS:
        return _coerce_scalar(value, tp, where)
    raise TypeError(
        f"{where}: unsupported annotation {tp!r}; config fields may be int, float, bool, str, "
        "Literal, X | None, list/tuple of those, or a nested dataclass"
    )


def _to_int(value: Any) -> int:
    if isinstance(value, bool):  # YAML `true` is not a count
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string: YAML 1.1 floats need one
        return float(value.strip())
    raise TypeError


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return str(value)  # drops the _Text marker
    raise TypeError  # YAML `name: yes` is True, not "yes": make the user quote it


# Scalar annotation -> (converter, how the error message names what is expected).
_SCALARS: dict[type, tuple[Any, str]] = {
    int: (_to_int, "an integer"),
    float: (_to_float, "a float"),
    bool: (_to_bool, "a boolean (true/false, yes/no, 1/0)"),
    str: (_to_str, "a string"),
}


def _coerce_scalar(value: Any, tp: type, where: str, expected: str | None = None) -> Any:
    convert, description = _SCALARS[tp]
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {expected or description}, got {value!r}") from None


def _coerce_optional(value: Any, tp: Any, where: str, base: Any) -> Any:
    inner = _optional_inner(tp)
    if inner is None:
        raise TypeError(f"{where}: unsupported annotation {tp!r}; only `X | None` unions are allowed")
    if value is None or (isinstance(value, _Text) and value.lower() in _NULLS):
        return None
    if inner in _SCALARS:
        return _coerce_scalar(value, inner, where, expected=f"{_SCALARS[inner][1]} or null")
    return _coerce(value, inner, where, base)


def _coerce_literal(value: Any, options: tuple, where: str) -> Any:
    for option in options:
        convert = _SCALARS.get(type(option), (None,))[0]
        try:
            candidate = convert(value) if convert else value
        except (TypeError, ValueError):
            continue
        if type(candidate) is type(option) and candidate == option:
            return option
    allowed = ", ".join(repr(o) for o in options)
    raise ConfigError(f"{where}: must be one of {allowed}, got {value!r}")


def _coerce_sequence(value: Any, tp: Any, where: str) -> list | tuple:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not args:
        raise TypeError(f"{where}: annotate the item type, e.g. list[int], not {tp!r}")
    if isinstance(value, str):  # an override, or a YAML scalar: comma-separated
        value = _split_list(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        item_types = list(args)
    else:
        item_types = [args[0]] * len(value)
    items = [_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
    return items if origin is list else tuple(items)


def _split_list(text: str) -> list[_Text]:
    """`"1,2,3"` or `"[1, 2, 3]"` -> items; `""` or `"[]"` -> empty."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    if not body.strip():
        return []
    return [_Text(part.strip()) for part in body.split(",")]


def _coerce_dataclass(value: Any, tp: type, where: str, base: Any) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, Mapping):
        dotted = where.partition(".")[2]
        raise ConfigError(
            f"{where}: is a group of settings, got {value!r}; "
            f"give a mapping in YAML or set its fields as {dotted}.FIELD=VALUE"
        )
    return _build(tp, value, where, base if isinstance(base, tp) else None)


# ---------------------------------------------------------------------------------------------
# Introspection helpers


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations; works with `from __future__ import annotations` (string annotations)."""
    return typing.get_type_hints(cls)


def _settable(cls: type) -> dict[str, dataclasses.Field]:
    """The fields a user may set, in declaration order; `init=False` fields are derived."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _optional_inner(tp: Any) -> Any:
    """X for `X | None` / `Optional[X]`; None for any other union."""
    args = typing.get_args(tp)
    rest = [a for a in args if a is not type(None)]
    return rest[0] if len(args) == 2 and len(rest) == 1 else None


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass behind `D` or `D | None`, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        tp = _optional_inner(tp)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _check_file_keys(cls: type, mapping: Mapping, where: str, path: str | Path) -> None:
    """Every key of a config file's mapping (nested ones too) is a field of `cls`, or the error names the file."""
    known = _settable(cls)
    for key, value in mapping.items():
        if str(key) not in known:
            raise ConfigError(f"config file {path}: {_unknown_field(where, str(key), known, cls)}")
        inner = _dataclass_in(_hints(cls)[str(key)])
        if inner is not None and isinstance(value, Mapping):
            _check_file_keys(inner, value, f"{where}.{key}", path)


def _unknown_field(where: str, name: str, known: Mapping[str, Any], cls: type | None = None) -> ConfigError:
    """The error of a field `cls` does not have; a renamed one (the class's `RENAMED`, old -> new) names its new name."""
    new = getattr(cls, "RENAMED", {}).get(name)
    if new is not None:
        return ConfigError(f"{where}.{name}: renamed to {new!r} (the same name on every stage); write {new}=... instead")
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown field {name!r}{hint}; known fields: {', '.join(known)}")


def _kind(value: Any) -> str:
    """A YAML-flavoured name for the type of `value`, for error messages."""
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
    if value is None:
        return "null"
    for tp, name in kinds.items():
        if isinstance(value, tp):
            return name
    return type(value).__name__


def _type_name(tp: Any) -> str:
    """`float`, `int | None`, `'adamw' | 'sgd'`, `list[int]`, `OptimConfig`: how help shows a type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", repr(tp))


# ---------------------------------------------------------------------------------------------
# Docs, help and saving


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it, including fields inherited from dataclass bases."""
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: doc for name, doc in docs.items() if name in names}


def _own_field_docs(klass: type) -> dict[str, str]:
    """Docstrings under annotated assignments in `klass`'s own body, read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):  # defined in a REPL or by exec: no source to read
        return {}
    node = tree.body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    docs = {}
    for stmt, after in zip(node.body, node.body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def config_help(cls: type) -> str:
    """One entry per field, `name (type, default X)` then its docstring; nested fields dotted."""
    lines: list[str] = []
    _help_lines(cls, "", None, lines)
    return "\n".join(lines)


def _help_lines(cls: type, prefix: str, base: Any, lines: list[str]) -> None:
    docs, hints = field_docs(cls), _hints(cls)
    for name, f in _settable(cls).items():
        default = getattr(base, name) if base is not None else _default(f)
        inner = _dataclass_in(hints[name])
        if inner is not None and (default is dataclasses.MISSING or isinstance(default, inner)):
            lines.append(f"  {prefix}{name} ({_type_name(hints[name])}): group, set as {prefix}{name}.FIELD")
            lines.extend(f"      {line}" for line in docs.get(name, "").splitlines())
            _help_lines(inner, f"{prefix}{name}.", default if isinstance(default, inner) else None, lines)
            continue
        shown = "required" if default is dataclasses.MISSING else f"default {_show(default)}"
        lines.append(f"  {prefix}{name} ({_type_name(hints[name])}, {shown})")
        lines.extend(f"      {line}" for line in docs.get(name, "").splitlines())


def _show(value: Any) -> str:
    """A default as a user would type it in an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value and value.strip() == value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML so that `load_config(type(cfg), path) == cfg`; derived fields are left out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _plain(cfg)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if yaml.safe_load(text) != data:  # PyYAML writes some characters (U+0085) raw that it reads as breaks
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=False)
    path.write_text(text, encoding="utf-8")


def _plain(value: Any) -> Any:
    """Dataclasses -> dicts of their settable fields, tuples -> lists; YAML-safe plain types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _settable(type(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

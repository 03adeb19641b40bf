"""tether.config: coercion by annotation, YAML + overrides, validation order, errors, round trip, help."""

from __future__ import annotations  # string annotations: load_config must resolve them

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.config import (
    check,
    config_from_dict,
    config_help,
    field_docs,
    load_config,
    save_config,
    validate_config,
)
from tether.errors import ConfigError


@dataclass
class OptimCfg:
    """Optimizer settings."""

    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""

    def validate(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")


@dataclass
class BaseCfg:
    seed: int = 0
    """Random seed."""
    out: str = "runs/x"
    """Run folder."""


@dataclass
class TrainCfg(BaseCfg):
    """A stage config with one field of every supported kind."""

    steps: int = 10
    """Optimizer steps.

    Second paragraph of the docstring."""
    scale: float = 1.0
    """A float."""
    resume: bool = False
    """Continue from the last checkpoint."""
    optim_name: Literal["adamw", "sgd"] = "adamw"
    """Which optimizer."""
    max_len: Optional[int] = None
    """Truncate to this many tokens, or null for no limit."""
    tag: str | None = "base"
    """An optional string."""
    layers: list[int] = field(default_factory=lambda: [1, 2])
    """Layer indices."""
    names: list[str] = field(default_factory=list)
    """Some names."""
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=0.5))
    """Optimizer group (default differs from OptimCfg's own)."""
    derived: int = field(init=False, default=0)
    """Computed in __post_init__; not settable."""

    def __post_init__(self) -> None:
        self.derived = self.steps * 2

    def validate(self) -> None:
        check(self.steps > 0, "steps", "must be > 0")
        check(self.optim.lr < 10, "optim.lr", "must be < 10 for this stage")


@dataclass
class RequiredCfg:
    data: str
    """Required path."""
    n: int = 1


def _yaml(tmp_path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- field docs ---------------------------------------------------------------------------------


def test_field_docs_reads_docstrings_including_inherited_and_cleans_indentation():
    docs = field_docs(TrainCfg)
    assert docs["seed"] == "Random seed."  # from BaseCfg
    assert docs["steps"] == "Optimizer steps.\n\nSecond paragraph of the docstring."
    assert docs["optim"] == "Optimizer group (default differs from OptimCfg's own)."
    assert list(docs)[:2] == ["seed", "out"]
    assert "n" not in field_docs(RequiredCfg)  # no docstring, no entry
    docs["seed"] = "mutated"
    assert field_docs(TrainCfg)["seed"] == "Random seed."  # callers get a copy of the cache


# --- defaults and coercion ----------------------------------------------------------------------


def test_no_path_no_overrides_gives_defaults_and_runs_post_init():
    cfg = load_config(TrainCfg)
    assert cfg == TrainCfg()
    assert cfg.optim == OptimCfg(lr=0.5) and cfg.derived == 20


@pytest.mark.parametrize(
    "override, attr, expected",
    [
        ("steps=7", "steps", 7),
        ("steps= 1_000 ", "steps", 1000),
        ("scale=1e-3", "scale", 0.001),
        ("scale=2", "scale", 2.0),
        ("scale=-inf", "scale", float("-inf")),
        ("out=a=b", "out", "a=b"),  # only the first '=' splits
        ("out=", "out", ""),
        ("tag=null", "tag", None),
        ("tag=None", "tag", None),
        ("tag=NULL", "tag", None),
        ("tag=x", "tag", "x"),
        ("max_len=none", "max_len", None),
        ("max_len=64", "max_len", 64),
        ("optim_name=sgd", "optim_name", "sgd"),
        ("layers=3,4, 5", "layers", [3, 4, 5]),
        ("layers=[6, 7]", "layers", [6, 7]),
        ("layers=", "layers", []),
        ("layers=[]", "layers", []),
        ("names=a,b", "names", ["a", "b"]),
        ("optim.lr=0.25", "optim", OptimCfg(lr=0.25)),
        ("optim.betas=0.8,0.9", "optim", OptimCfg(lr=0.5, betas=(0.8, 0.9))),  # keeps TrainCfg's lr
    ],
)
def test_override_coercion(override, attr, expected):
    cfg = load_config(TrainCfg, overrides=[override])
    assert getattr(cfg, attr) == expected
    assert type(getattr(cfg, attr)) is type(expected)


@pytest.mark.parametrize("text", ["true", "TRUE", "yes", "Yes", "1", " true "])
def test_bool_true_spellings(text):
    assert load_config(TrainCfg, overrides=[f"resume={text}"]).resume is True


@pytest.mark.parametrize("text", ["false", "False", "no", "NO", "0"])
def test_bool_false_spellings(text):
    assert load_config(TrainCfg, overrides=[f"resume={text}", "tag=t"]).resume is False


def test_yaml_values_are_coerced_by_annotation(tmp_path):
    path = _yaml(
        tmp_path,
        "scale: 1e-3\n"  # PyYAML reads this as the string '1e-3'
        "steps: 3\n"
        "resume: yes\n"
        "max_len: null\n"
        "tag: 'null'\n"  # a quoted 'null' in YAML is the string, not None
        "layers: [4, 5]\n"
        "names: a, b\n"
        "optim: {lr: 0.01}\n",
    )
    cfg = load_config(TrainCfg, path)
    assert (cfg.scale, cfg.steps, cfg.resume, cfg.max_len, cfg.tag) == (0.001, 3, True, None, "null")
    assert cfg.layers == [4, 5] and cfg.names == ["a", "b"]
    assert cfg.optim == OptimCfg(lr=0.01, betas=(0.9, 0.95))  # partial mapping keeps the rest
    assert cfg.derived == 6


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(TrainCfg, _yaml(tmp_path, "")) == TrainCfg()


def test_overrides_win_over_yaml_which_wins_over_defaults(tmp_path):
    path = _yaml(tmp_path, "steps: 3\nscale: 2.5\noptim:\n  lr: 0.1\n")
    cfg = load_config(TrainCfg, path, ["steps=4", "optim.betas=0.1,0.2"])
    assert cfg.steps == 4  # override
    assert cfg.scale == 2.5  # YAML
    assert cfg.optim == OptimCfg(lr=0.1, betas=(0.1, 0.2))  # YAML and override merge in the group
    assert cfg.seed == 0  # default
    assert load_config(TrainCfg, overrides=["steps=1", "steps=2"]).steps == 2  # last one wins


def test_override_into_group_that_yaml_set_to_null_starts_from_defaults(tmp_path):
    cfg = load_config(TrainCfg, _yaml(tmp_path, "optim: null\n"), ["optim.lr=0.2"])
    assert cfg.optim == OptimCfg(lr=0.2)


def test_required_fields_and_derived_fields():
    assert load_config(RequiredCfg, overrides=["data=d.jsonl"]) == RequiredCfg("d.jsonl")
    assert _error(load_config, RequiredCfg) == "RequiredCfg: missing required field 'data'"
    assert _error(load_config, TrainCfg, overrides=["derived=3"]).startswith(
        "TrainCfg: unknown field 'derived'; known fields: seed, out, steps,"
    )


def test_config_from_dict_accepts_built_groups_and_validates():
    cfg = config_from_dict(TrainCfg, {"optim": OptimCfg(lr=2.0), "steps": "5"})
    assert cfg.optim.lr == 2.0 and cfg.steps == 5
    assert _error(config_from_dict, TrainCfg, {"steps": 0}) == "TrainCfg.steps: must be > 0"
    assert _error(config_from_dict, TrainCfg, [1], source="row") == "row: not a mapping (got a list)"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("scale=abc", "TrainCfg.scale: expected a float, got 'abc'"),
        ("steps=1.5", "TrainCfg.steps: expected an integer, got '1.5'"),
        ("steps=null", "TrainCfg.steps: expected an integer, got 'null'"),
        ("max_len=ten", "TrainCfg.max_len: expected an integer or null, got 'ten'"),
        ("resume=maybe", "TrainCfg.resume: expected a boolean (true/false, yes/no, 1/0), got 'maybe'"),
        ("optim_name=adam", "TrainCfg.optim_name: must be one of 'adamw', 'sgd', got 'adam'"),
        ("layers=1,x", "TrainCfg.layers[1]: expected an integer, got 'x'"),
        ("optim.betas=1,2,3", "TrainCfg.optim.betas: expected 2 items, got 3"),
        ("optim.lr=fast", "TrainCfg.optim.lr: expected a float, got 'fast'"),
        (
            "optim=fast",
            "TrainCfg.optim: is a group of settings, got 'fast'; give a mapping in YAML or set its "
            "fields as optim.FIELD=VALUE",
        ),
        (
            "stpes=3",
            "TrainCfg: unknown field 'stpes' (did you mean 'steps'?); known fields: seed, out, steps, "
            "scale, resume, optim_name, max_len, tag, layers, names, optim",
        ),
        (
            "zzz=3",
            "TrainCfg: unknown field 'zzz'; known fields: seed, out, steps, scale, resume, optim_name, "
            "max_len, tag, layers, names, optim",
        ),
        ("optim.lrr=3", "TrainCfg.optim: unknown field 'lrr' (did you mean 'lr'?); known fields: lr, betas"),
        ("optimm.lr=3", "TrainCfg: unknown field 'optimm' (did you mean 'optim'?); known fields: seed, out, "
         "steps, scale, resume, optim_name, max_len, tag, layers, names, optim"),
        ("scale.x=3", "TrainCfg.scale: has no fields (it is float), so 'scale.x' cannot be set"),
        ("steps", "override 'steps': expected key=value, e.g. lr=3e-4 or optim.lr=3e-4"),
        ("=3", "override '=3': expected key=value, e.g. lr=3e-4 or optim.lr=3e-4"),
    ],
)
def test_override_errors_name_the_field_and_what_is_allowed(override, message):
    assert _error(load_config, TrainCfg, overrides=[override]) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: true\n", "TrainCfg.steps: expected an integer, got True"),  # a YAML bool is not a count
        ("steps: 2.0\n", "TrainCfg.steps: expected an integer, got 2.0"),
        ("scale: false\n", "TrainCfg.scale: expected a float, got False"),
        ("out: yes\n", "TrainCfg.out: expected a string, got True"),  # YAML 1.1 reads yes as True
        ("out: 12\n", "TrainCfg.out: expected a string, got 12"),
        ("resume: 2\n", "TrainCfg.resume: expected a boolean (true/false, yes/no, 1/0), got 2"),
        ("tag: None\n", None),  # in YAML, 'None' is a plain string
        ("layers: {a: 1}\n", "TrainCfg.layers: expected a list, got {'a': 1}"),
        ("optim: 3\n", "TrainCfg.optim: is a group of settings, got 3; give a mapping in YAML or set its "
         "fields as optim.FIELD=VALUE"),
        ("optim:\n  lr: [1]\n", "TrainCfg.optim.lr: expected a float, got [1]"),
        ("optim_name: 1\n", "TrainCfg.optim_name: must be one of 'adamw', 'sgd', got 1"),
    ],
)
def test_yaml_type_errors(tmp_path, text, message):
    path = _yaml(tmp_path, text)
    if message is None:
        assert load_config(TrainCfg, path).tag == "None"
    else:
        assert _error(load_config, TrainCfg, path) == message


def test_an_unknown_key_in_a_config_file_names_the_file(tmp_path):
    path = _yaml(tmp_path, "steps: 2\noptim:\n  lrr: 1\n")
    assert _error(load_config, TrainCfg, path) == (
        f"config file {path}: TrainCfg.optim: unknown field 'lrr' (did you mean 'lr'?); known fields: lr, betas")
    assert _error(load_config, TrainCfg, _yaml(tmp_path, "stpes: 2\n")).startswith(
        f"config file {tmp_path}")
    # an override's own unknown key is the override's, not the file's
    assert _error(load_config, TrainCfg, _yaml(tmp_path, "steps: 2\n"), ["zzz=1"]).startswith(
        "TrainCfg: unknown field 'zzz'")


def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert _error(load_config, TrainCfg, str(missing)) == f"config file {missing}: file not found"
    assert _error(load_config, TrainCfg, str(tmp_path)) == (
        f"config file {tmp_path}: is a directory, expected a YAML file"
    )
    listy = _yaml(tmp_path, "- 1\n- 2\n", "list.yaml")
    assert _error(load_config, TrainCfg, listy) == f"config file {listy}: not a mapping (got a list)"
    scalar = _yaml(tmp_path, "just text\n", "scalar.yaml")
    assert _error(load_config, TrainCfg, scalar) == f"config file {scalar}: not a mapping (got a string)"
    broken = _yaml(tmp_path, "steps: 3\nscale: [1, 2\n", "broken.yaml")
    message = _error(load_config, TrainCfg, broken)
    assert message.startswith(f"config file {broken}: invalid YAML at line 3, column 1: ")
    assert "expected ',' or ']'" in message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"steps: \xff\n")
    assert _error(load_config, TrainCfg, str(binary)) == f"config file {binary}: not valid UTF-8 (byte 7)"


def test_unknown_yaml_key_suggests_a_field(tmp_path):
    path = _yaml(tmp_path, "optim:\n  bettas: 1\n")
    assert _error(load_config, TrainCfg, path) == (
        f"config file {path}: TrainCfg.optim: unknown field 'bettas' (did you mean 'betas'?); known fields: lr, betas"
    )


# --- validation ---------------------------------------------------------------------------------


def test_check_raises_with_field_and_message():
    check(True, "lr", "unused")
    with pytest.raises(ConfigError, match=r"^lr: must be > 0$"):
        check(False, "lr", "must be > 0")


def test_validate_gets_the_class_name_prefixed():
    assert _error(load_config, TrainCfg, overrides=["steps=0"]) == "TrainCfg.steps: must be > 0"
    assert _error(load_config, TrainCfg, overrides=["optim.lr=20"]) == (
        "TrainCfg.optim.lr: must be < 10 for this stage"
    )


def test_nested_validate_runs_before_the_parent():
    # both the nested (lr > 0) and the parent (steps > 0) checks fail; the nested one must be reported
    message = _error(load_config, TrainCfg, overrides=["optim.lr=-1", "steps=0"])
    assert message == "TrainCfg.optim.lr: must be > 0"
    calls = []

    @dataclass
    class Inner:
        def validate(self) -> None:
            calls.append("inner")

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)

        def validate(self) -> None:
            calls.append("outer")

    validate_config(Outer())
    assert calls == ["inner", "outer"]


# --- save / load round trip ---------------------------------------------------------------------


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(
        TrainCfg,
        overrides=[
            "seed=3", "out=runs/a b", "steps=5", "scale=1e-10", "resume=yes", "optim_name=sgd",
            "max_len=null", "tag=yes", "layers=", "names=null,1e-3,true", "optim.lr=0.125",
            "optim.betas=0.5,0.25",
        ],
    )  # fmt: skip
    path = tmp_path / "sub" / "saved.yaml"
    save_config(cfg, path)
    text = path.read_text(encoding="utf-8")
    assert "derived" not in text  # init=False fields are derived, never saved
    assert "optim:\n  lr: 0.125\n  betas:\n  - 0.5\n  - 0.25\n" in text
    again = load_config(TrainCfg, str(path))
    assert again == cfg
    assert again.tag == "yes" and again.names == ["null", "1e-3", "true"] and again.max_len is None


@given(
    scale=st.floats(allow_nan=False),
    out=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    steps=st.integers(min_value=1, max_value=2**70),
)
def test_round_trip_property(tmp_path_factory, scale, out, steps):
    path = tmp_path_factory.mktemp("rt") / "c.yaml"
    cfg = TrainCfg(scale=scale, out=out, steps=steps)
    save_config(cfg, path)
    assert load_config(TrainCfg, str(path)) == cfg


@given(scale=st.floats(allow_nan=False))
def test_float_override_parses_repr(scale):
    assert load_config(TrainCfg, overrides=[f"scale={scale!r}"]).scale == scale


# --- help ---------------------------------------------------------------------------------------


def test_config_help_lists_types_defaults_docs_and_dotted_nested_fields():
    text = config_help(TrainCfg)
    lines = text.splitlines()
    assert lines[0] == "  seed (int, default 0)"
    assert lines[1] == "      Random seed."
    assert "  out (str, default runs/x)" in lines
    assert "  steps (int, default 10)" in lines
    i = lines.index("  steps (int, default 10)")
    assert lines[i + 1 : i + 4] == ["      Optimizer steps.", "      ", "      Second paragraph of the docstring."]
    assert "  resume (bool, default false)" in lines
    assert "  optim_name ('adamw' | 'sgd', default adamw)" in lines
    assert "  max_len (int | None, default null)" in lines
    assert "  layers (list[int], default [1, 2])" in lines
    assert "  names (list[str], default [])" in lines
    assert "  optim (OptimCfg): group, set as optim.FIELD" in lines
    assert "  optim.lr (float, default 0.5)" in lines  # the parent's default, not OptimCfg's 1e-3
    assert "      Peak learning rate." in lines
    assert "  optim.betas (tuple[float, float], default [0.9, 0.95])" in lines
    assert "derived" not in text
    assert config_help(RequiredCfg).splitlines()[0] == "  data (str, required)"


def test_unsupported_annotation_is_a_programming_error():
    @dataclass
    class Bad:
        d: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="Bad.d: unsupported annotation"):
        load_config(Bad, overrides=["d=1"])

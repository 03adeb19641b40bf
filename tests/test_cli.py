"""tether.cli: dispatch to a fake stage defined here, help output, and `error: ...` with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tether import cli
from tether.cli import STAGES, Stage, main
from tether.config import check, config_help
from tether.errors import DataError

CALLS: list = []


@dataclass
class FakeConfig:
    """The fake stage's settings."""

    lr: float = 1e-3
    """Peak learning rate."""
    optim: Literal["adamw", "sgd"] = "adamw"
    """Which optimizer."""
    resume: bool = False
    """Continue from the last checkpoint."""

    def validate(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")


@dataclass
class NoResumeConfig:
    steps: int = 1
    """Steps."""


def run(cfg: FakeConfig) -> None:
    if cfg.optim == "sgd" and cfg.lr > 1:
        raise DataError("data.jsonl:3: messages: no assistant message")
    CALLS.append(cfg)


def run_no_resume(cfg: NoResumeConfig) -> None:
    CALLS.append(cfg)


@pytest.fixture(autouse=True)
def fake_stages(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(
        cli,
        "STAGES",
        {
            "fake": Stage(__name__, "FakeConfig", "run", "A fake stage for tests."),
            "plain": Stage(__name__, "NoResumeConfig", "run_no_resume", "No resume field."),
            "ghost": Stage("tether.no_such_module", "X", "run", "Module does not exist."),
            "hollow": Stage(__name__, "Missing", "run", "Config class does not exist."),
        },
    )


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_stage_with_defaults_yaml_and_overrides(capsys, tmp_path):
    assert _main(capsys, "fake") == (0, "", "")
    assert CALLS == [FakeConfig()]
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.5\noptim: sgd\n", encoding="utf-8")
    # overrides before and after --config are both kept; the override wins over the file
    code, _, err = _main(capsys, "fake", "optim=adamw", "--config", str(config), "lr=2e-3")
    assert (code, err) == (0, "")
    assert CALLS[-1] == FakeConfig(lr=2e-3, optim="adamw")


def test_resume_flag_sets_the_field_and_wins_over_an_override(capsys):
    assert _main(capsys, "fake", "--resume", "resume=false")[0] == 0
    assert CALLS == [FakeConfig(resume=True)]


def test_resume_on_stage_without_resume_field_is_an_error(capsys):
    code, out, err = _main(capsys, "plain", "--resume")
    assert (code, out) == (2, "")
    assert err == "error: stage 'plain' does not support --resume (NoResumeConfig has no 'resume' field)\n"
    assert CALLS == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fak"], "unknown stage 'fak' (did you mean 'fake'?); stages: fake, plain, ghost, hollow"),
        (["xyz"], "unknown stage 'xyz'; stages: fake, plain, ghost, hollow"),
        (["--config", "a.yaml"], "expected a stage first, got option '--config'; usage: " + cli.USAGE),
        (["fake", "lr=abc"], "FakeConfig.lr: expected a float, got 'abc'"),
        (["fake", "lr=0"], "FakeConfig.lr: must be > 0"),
        (["fake", "optim=adam"], "FakeConfig.optim: must be one of 'adamw', 'sgd', got 'adam'"),
        (["fake", "lrr=1"], "FakeConfig: unknown field 'lrr' (did you mean 'lr'?); known fields: lr, optim, resume"),
        (["fake", "lr"], "override 'lr': expected key=value, e.g. lr=3e-4 or optim.lr=3e-4"),
        (["fake", "--config", "nope.yaml"], "config file nope.yaml: file not found"),
        (
            ["fake", "--lr=3"],
            "tether fake: unrecognized arguments: --lr=3; usage: tether fake [--config FILE.yaml] [--resume] "
            "[key=value ...]",
        ),
        (
            ["fake", "--conf", "x.yaml"],  # no abbreviations: --conf is not --config
            "tether fake: unrecognized arguments: --conf; usage: tether fake [--config FILE.yaml] [--resume] "
            "[key=value ...]",
        ),
        (["ghost"], "stage 'ghost' is not available: module tether.no_such_module not found"),
        (["hollow"], f"stage 'hollow' is not available: {__name__} has no Missing"),
        (["fake", "optim=sgd", "lr=2"], "data.jsonl:3: messages: no assistant message"),  # raised by the stage
    ],
)
def test_user_errors_print_one_line_and_exit_2(capsys, argv, message):
    code, out, err = _main(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == f"error: {message}\n"
    assert "Traceback" not in err


def test_a_bug_in_a_stage_is_not_swallowed(capsys, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "run", lambda cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["fake"])


def test_top_help_lists_stages_without_importing_them(capsys):
    code, out, err = _main(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith(f"usage: {cli.USAGE}\n\nstages:\n")
    assert "  fake    A fake stage for tests.\n" in out
    assert "  ghost   Module does not exist.\n" in out  # listed although its module is missing
    assert "Run 'tether STAGE --help'" in out
    assert _main(capsys, "-h")[1] == out


def test_no_arguments_prints_help_to_stderr_and_exits_2(capsys):
    code, out, err = _main(capsys)
    assert (code, out) == (2, "")
    assert err.startswith("usage: ")


def test_stage_help_shows_summary_and_field_docs(capsys):
    code, out, err = _main(capsys, "fake", "--help")
    assert (code, err) == (0, "")
    assert CALLS == []  # help does not run the stage
    lines = out.splitlines()
    assert lines[0] == "usage: tether fake [--config FILE.yaml] [--resume] [key=value ...]"
    assert lines[2] == "A fake stage for tests."
    assert "  lr (float, default 0.001)" in lines
    assert "      Peak learning rate." in lines
    assert "  optim ('adamw' | 'sgd', default adamw)" in lines
    assert "      Continue from the last checkpoint." in lines


def test_version(capsys):
    assert _main(capsys, "--version") == (0, "tether 0.1.0\n", "")


def test_registry_points_at_the_stage_modules():
    import importlib

    assert {"world", "tokenizer", "pretrain", "sft", "collect", "label", "rm", "evaluate", "demo"} <= set(STAGES)
    for name, stage in STAGES.items():  # every entry resolves: module, config dataclass, function
        module = importlib.import_module(stage.module)
        assert callable(getattr(module, stage.function)), name
        assert "(" in config_help(getattr(module, stage.config)), name
    assert STAGES["sft"] == Stage(
        "tether.stages.sft", "SFTConfig", "run",
        "Supervised fine-tuning on conversations, loss on assistant tokens only.",
    )  # fmt: skip
    assert all(stage.summary.endswith(".") and stage.function == "run" for stage in STAGES.values())


def test_console_script_help_imports_no_torch():
    exe = Path(sys.executable).with_name("tether")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tether STAGE")
    for name in ("world", "tokenizer", "pretrain", "sft", "evaluate", "demo"):
        assert f"\n  {name} " in proc.stdout
    probe = "import sys; from tether.cli import main; main(['--help']); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[-1] == "False"


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "nope"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown stage 'nope'")


def test_help_into_a_closed_pipe_leaves_without_a_traceback():
    # `tether sft --help | head -1`: the reader is gone before the help is written
    proc = subprocess.Popen([sys.executable, "-m", "tether", "sft", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err and "BrokenPipe" not in err

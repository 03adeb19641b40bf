"""tether.progress: a bar on a terminal, plain progress lines in a log (rich draws no live bar there)."""
from __future__ import annotations

import tether.progress as progress


def test_a_redirected_stderr_gets_progress_lines_and_a_last_one(monkeypatch, capsys):
    monkeypatch.delenv("TETHER_QUIET", raising=False)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at every update
    with progress.progress_bar("sft", total=3, completed=1) as bar:
        bar.update(loss=0.5)
        bar.update(loss=0.25, lr=1e-4)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in lines] == [["sft", "2/3"], ["sft", "3/3"], ["sft", "3/3"]]
    assert lines[0].endswith("loss 0.5") and lines[-1].endswith("loss 0.25  lr 0.0001")


def test_quiet_runs_print_nothing(monkeypatch, capsys):
    monkeypatch.setenv("TETHER_QUIET", "1")
    with progress.progress_bar("sft", total=2) as bar:
        bar.update(loss=1.0)
    assert capsys.readouterr().err == ""

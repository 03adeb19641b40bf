"""The run report: `runs/<name>/report.html`, one self-contained page a team lead reads.

    from tether.report import write_report
    write_report("runs/demo")          # -> runs/demo/report.html

data.py reads the run folder (every input optional), findings.py draws the conclusions (Gao fit, hacking verdict,
alerts against the gold peak), plots.py makes the figures, html.py and templates/report.html.j2 render the page.
"""
from __future__ import annotations

from pathlib import Path

from tether.report.data import RunData, load_run

__all__ = ["RunData", "load_run", "write_report"]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run folder (default `<run_dir>/report.html`); returns its path."""
    from tether.report import (
        html,  # matplotlib and jinja2 only when a report is written
    )

    return html.write(load_run(run_dir), Path(out) if out else Path(run_dir) / "report.html")

"""`tether report`: the HTML report of a run folder (`tether.report`), from whatever stages it holds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tether.config import check


@dataclass
class ReportConfig:
    """Write `report.html` for a run folder: one self-contained file, plots embedded, readable offline."""

    run: str = "runs/demo"
    """Run folder (as written by `tether demo`); sections whose inputs are missing are skipped."""
    out: str = ""
    """Output file; "" = `<run>/report.html`."""

    def validate(self) -> None:
        check(Path(self.run).is_dir(), "run", f"no such folder: {self.run}")


def run(cfg: ReportConfig) -> Path:
    from tether.report import write_report

    path = write_report(cfg.run, cfg.out or None)
    print(f"report: {path}")
    return path

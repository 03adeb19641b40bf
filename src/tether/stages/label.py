"""`tether label`: the world's simulated raters label a comparison queue (one row per rating).

The stand-in for human raters when running on the tiny world: each pair goes to `overlap` distinct
raters of a seeded pool whose biases are documented in `tether.world.raters`. Inter-rater agreement
is measured with the same library functions the rater app reports.

With `app` on (the default), the simulated raters work through the rater app's service layer and its
SQLite database in `<out>/raters/` (`tether.world.rater_sessions`): the same storage, assignment and
export human raters use, so every labelled run exercises them, and `tether raters serve
project=<out>/raters` shows the dashboard afterwards.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from tether.math.agreement import agreement_report
from tether.config import save_config
from tether.data.preferences import Comparison, read_comparisons, write_comparisons
from tether.errors import ConfigError
from tether.world.build import load_world
from tether.world.rater_sessions import label_with_app
from tether.world.raters import RaterPoolConfig, label

console = Console(stderr=True)


@dataclass
class LabelConfig:
    """Label a comparison queue with the world's simulated raters."""

    queue: str = "runs/collect/queue.jsonl"
    """Comparison queue from `tether collect`."""
    world: str = "runs/world"
    """World folder (from `tether world`)."""
    raters: RaterPoolConfig = field(default_factory=RaterPoolConfig)
    """The simulated rater pool."""
    out: str = "runs/label"
    """Folder for comparisons.jsonl (one row per rating), agreement.json, config.yaml (and raters/ with app)."""
    app: bool = True
    """Rate through the rater app's service and database (`<out>/raters/`), as human raters would; off: label
    in memory (faster, same rater decisions, the app's assignment differs)."""


def labels_by_item(ratings: list[Comparison]) -> dict[str, dict[str, str]]:
    """{pair id: {rater: choice}}, the shape the agreement metrics take."""
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for r in ratings:
        table[r.id][r.rater] = r.choice
    return dict(table)


def check_same_pool(project: Path, pool: RaterPoolConfig) -> None:
    """A rerun into an existing project returns the ratings already there (every pair already has its raters),
    so a different pool would be silently ignored: refuse it, and record the pool on first use."""
    record = project / "simulated_pool.json"
    wanted = json.loads(json.dumps(asdict(pool)))
    if record.exists() and json.loads(record.read_text()) != wanted:
        raise ConfigError(f"raters: {project} was labelled by another simulated pool ({record}); "
                          "use a new `out` folder, or remove that one to relabel")
    project.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted, indent=1))


def run(cfg: LabelConfig) -> Path:
    queue = read_comparisons(cfg.queue)
    world = load_world(cfg.world)
    world.check_prompts([c.prompt_text for c in queue], cfg.queue, "the simulated raters rate the world's prompts "
                        "only; people rate any data in the rater app: tether raters import")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.app:
        check_same_pool(out / "raters", cfg.raters)
        ratings = label_with_app(queue, world.knowledge, cfg.raters, out / "raters", export_name=None)
    else:
        ratings = label(queue, world.knowledge, cfg.raters)
    write_comparisons(out / "comparisons.jsonl", ratings)
    report = agreement_report(labels_by_item(ratings))
    report["ties"] = sum(r.choice == "tie" for r in ratings) / max(1, len(ratings))
    (out / "agreement.json").write_text(json.dumps(report, indent=1, default=str))
    console.print(f"label: {len(ratings)} ratings of {len(queue)} pairs by {cfg.raters.n_raters} simulated raters "
                  f"(overlap {cfg.raters.overlap}); agreement {report.get('percent_agreement', float('nan')):.1%}")
    return out / "comparisons.jsonl"

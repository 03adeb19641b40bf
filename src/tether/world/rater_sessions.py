"""The world's simulated raters working through the rater app's service layer (issue 6, item 7).

`label_with_app` is the app-backed twin of `tether.world.raters.label`: the same pool, the same
`rate` decisions, but the pairs go through the app's storage and assignment (overlap k, never a pair
twice, guideline acknowledgement, idempotent submits), so every demo run exercises them. Differences
from `label`, by design:
- which raters rate which pair is the app's assignment (a seeded round-robin over the pool), not a
  seeded sample per pair; each pair still gets exactly `overlap` distinct raters;
- each rater's choice is decided on the pair in A/B order, exactly as `rate` does (so a given
  rater's label of a given pair is the same as under `label`), then submitted as the side it was
  displayed on, as a browser would; the app maps it back to A/B;
- a tie carries no strength (the app stores strength only for a left/right choice).

This module lives in `tether.world` because it imports the world; the app itself never does.
"""
from __future__ import annotations

import random
from pathlib import Path

from tether.data.preferences import Comparison, prompt_key, validate_comparison
from tether.raters.accounts import Accounts
from tether.raters.db import Database, database_url, migrate
from tether.raters.security import load_or_create_secret
from tether.raters.service import RaterService
from tether.world.knowledge import Knowledge
from tether.world.raters import GUIDELINE_VERSION, RaterPoolConfig, make_pool, rate

SIM_GUIDELINES = f"""# Simulated raters ({GUIDELINE_VERSION})

The tiny world's rater pool: each rater prefers the more helpful response as they perceive it, with
the length, flattery, agreement and confidence biases documented in `tether.world.raters`.
"""


def label_with_app(queue: list[Comparison], knowledge: Knowledge, cfg: RaterPoolConfig, project_dir: str | Path,
                   export_name: str | None = "comparisons.jsonl") -> list[Comparison]:
    """Label `queue` with the simulated pool through the rater app's service; one row per rating.

    `project_dir` holds the app's SQLite database (created with k = cfg.overlap and no gold pairs if
    new; an existing project keeps its settings and pairs). The pool's raters become users without
    passwords (they cannot sign in) and acknowledge the current guidelines. Rows come back in
    submission order, each with the rater's username, the guideline version and a timestamp;
    `export_name`, if given, also writes them to `<project_dir>/exports/<export_name>` (tether JSONL).
    Deterministic for a given cfg.seed on a new project, apart from the timestamps.
    """
    cfg.validate()
    for c in queue:
        validate_comparison(c)
    project_dir = Path(project_dir)
    secret = load_or_create_secret(project_dir)
    db = Database(database_url(project_dir))
    try:
        migrate(db)
        service = RaterService(db, project_dir, rng=random.Random(cfg.seed))
        accounts = Accounts(db, secret)
        if not service.has_project():
            service.create_project("simulated raters", cfg.overlap, gold_rate=0.0)
        if service.current_guideline() is None:
            service.add_guideline(GUIDELINE_VERSION, SIM_GUIDELINES)
        service.add_pairs(queue)
        _rate_all(service, accounts, queue, knowledge, cfg)
        wanted = {c.id for c in queue}
        rows = [c for c in service.labelled() if c.id in wanted]
        if export_name is not None and rows:
            service.export(export_name)
        return rows
    finally:
        db.close()


def _rate_all(service: RaterService, accounts: Accounts, queue: list[Comparison], knowledge: Knowledge,
              cfg: RaterPoolConfig) -> None:
    """Round-robin over the pool: each rater takes their next pair and rates it, until none is left."""
    by_content = {(prompt_key(c.prompt), frozenset((c.response_a, c.response_b))): c for c in queue}
    version = service.current_guideline().version
    active = []
    for rater in make_pool(cfg):
        user_id = accounts.add_user(rater.id)
        service.acknowledge(user_id, version)
        active.append((rater, user_id))
    while active:
        still = []
        for rater, user_id in active:
            task = service.next_assignment(user_id)
            if task is None:
                continue
            pair = by_content.get((prompt_key(task.prompt), frozenset((task.left, task.right))))
            if pair is None:  # a pair of an earlier run in this project: not ours to rate
                service.submit_rating(user_id, task.assignment_id, "skip", submission_id=f"sim-skip-{task.assignment_id:08d}")
                still.append((rater, user_id))
                continue
            verdict = rate(rater, pair, knowledge, cfg)
            left_is_a = task.left == pair.response_a
            side = {"A": "left" if left_is_a else "right", "B": "right" if left_is_a else "left"}.get(verdict.choice, "tie")
            service.submit_rating(user_id, task.assignment_id, side, verdict.strength if side != "tie" else None,
                                  submission_id=f"sim-{task.assignment_id:012d}")
            still.append((rater, user_id))
        active = still

"""Exports: every rating as a labelled comparison, written to `<project>/exports/<name>` as tether JSONL or TRL.

Export files hold every rater's votes and rationales: they are created owner-only (0600, in a 0700
folder) and never silently replace an earlier export (`overwrite=True` says so explicitly).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import select

from tether.data.preferences import Comparison, write_comparisons, write_trl
from tether.raters.db import Assignment, Database, Pair, Rating, User, promoted_at
from tether.raters.errors import Conflict, Invalid

EXPORT_FORMATS = ("tether", "trl")
EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def iso(t) -> str:
    return t.isoformat(timespec="seconds") + "+00:00"


def _before_promotion(pair: Pair, rating: Rating) -> bool:
    """A vote on a pair cast before an admin promoted it to gold: a preference label like any other."""
    when = promoted_at(pair.meta)
    return when is not None and rating.submitted_at < when


def labelled(db: Database) -> list[Comparison]:
    """Every rating of a regular pair as a labelled comparison (skips and gold checks left out; votes on a pair cast
    before it was promoted to gold are kept).

    `rater` is the username, `timestamp` the submit time; `meta` adds shown_at, which side was shown
    on the left, the rationale (if any), the per-criterion verdicts (`criteria`, if asked) and an
    admin's adjudication of the pair (if any) to the pair's own meta.
    """
    q = (select(Rating, Assignment, Pair, User.username).join(Assignment, Rating.assignment_id == Assignment.id)
         .join(Pair, Assignment.pair_id == Pair.id).join(User, Assignment.rater_id == User.id)
         .where(Rating.choice != "skip").order_by(Rating.id))
    out = []
    with db.read() as s:
        for r, a, p, username in s.execute(q):
            if p.is_gold and not _before_promotion(p, r):  # gold checks are not preference labels
                continue
            meta = {**p.meta, "shown_at": iso(a.shown_at), "left_shown": "A" if a.left_is_a else "B"}
            if r.rationale:
                meta["rationale"] = r.rationale
            if r.criteria:
                meta["criteria"] = dict(r.criteria)
            if p.adjudication:
                meta["adjudication"] = p.adjudication
            out.append(Comparison(p.prompt, p.response_a, p.response_b, r.choice, r.strength, username,
                                  r.guideline_version, p.source_a, p.source_b, iso(r.submitted_at), p.key, meta))
    return out


def export_path(project_dir: Path, name: str) -> Path:
    """`<project>/exports/<name>`; a name with a separator, a leading dot or `..` is refused."""
    if not isinstance(name, str) or not EXPORT_NAME.fullmatch(name) or ".." in name:
        raise Invalid(f"name: {name!r} is not a plain file name (letters, digits, . _ -; no folders)")
    folder = (project_dir / "exports").resolve()
    path = folder / name
    if path.resolve().parent != folder or path.is_symlink():
        raise Invalid(f"name: {name!r} points outside the exports folder")
    return path


def export(db: Database, project_dir: Path, name: str, fmt: str = "tether", overwrite: bool = False) -> tuple[Path, int]:
    """Write the ratings to `<project>/exports/<name>` as tether JSONL or TRL rows; (path, rows written).

    TRL rows hold a winner and a loser, so ties are left out of them; conversational prompts make
    the TRL file conversational. An existing file is a Conflict unless `overwrite`.
    """
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    path = export_path(project_dir, name)
    comparisons = labelled(db)
    if not comparisons:
        raise Conflict("export: no ratings yet")
    if fmt == "trl":
        comparisons = [c for c in comparisons if c.choice != "tie"]
        if not comparisons:
            raise Conflict("export: every rating is a tie; TRL rows need a chosen response")
    _create_private(path, overwrite)
    try:
        if fmt == "tether":
            write_comparisons(path, comparisons)
            return path, len(comparisons)
        n, _ = write_trl(path, comparisons, conversational=any(isinstance(c.prompt, list) for c in comparisons))
        return path, n
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _create_private(path: Path, overwrite: bool) -> None:
    """Create `path` empty, mode 0600, in a 0700 folder; Conflict if it exists and not `overwrite`.

    O_EXCL claims the name atomically, so two exports cannot write the same file at once either; the
    writers then fill the file in place, keeping its mode.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if overwrite:
        path.unlink(missing_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise Conflict(f"name: exports/{path.name} exists; choose another name or overwrite it explicitly") from None

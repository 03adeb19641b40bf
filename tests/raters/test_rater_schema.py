"""The migrations build exactly the ORM's schema (SQLite and PostgreSQL); the app never imports torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tether.raters import db as raters_db
from tether.raters.db import Base, Database, database_url, migrate


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_schema_equals_the_orm_metadata(backend, tmp_path, request):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    db = Database(database_url(tmp_path, url))
    migrate(db)
    migrate(db)  # a second upgrade is a no-op
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.close()
    assert diffs == []


def test_the_app_imports_no_torch(tmp_path):
    probe = f"""
import pkgutil, importlib, sys
import tether.raters
for m in pkgutil.walk_packages(tether.raters.__path__, "tether.raters."):
    importlib.import_module(m.name)
from tether.raters.web import create_app
app = create_app({str(tmp_path)!r})
app.openapi()
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "tether.stages", "tether.world", "transformers")))
print(bad)
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_migration_0002_counts_the_slots_an_existing_project_holds(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    db = Database(database_url(tmp_path))
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(raters_db.__file__).parent / "migrations"))
    with db.engine.execution_options(sqlite_write=True).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO users VALUES (1, 'r1', NULL, 'rater', 1, '2024-01-01'), (2, 'r2', NULL, 'rater', 1, '2024-01-01'),"
                          " (3, 'r3', NULL, 'rater', 1, '2024-01-01')"))
        conn.execute(text("INSERT INTO guidelines VALUES (1, '1', 'g', '2024-01-01')"))
        conn.execute(text("INSERT INTO pairs VALUES (1, 'p1', '\"q\"', 'a', 'b', NULL, NULL, '{}', 0, NULL, '2024-01-01'),"
                          " (2, 'p2', '\"q\"', 'a', 'b', NULL, NULL, '{}', 0, NULL, '2024-01-01')"))
        # pair 1: two slots held (open, done) and one given back by a skip; pair 2: none
        conn.execute(text("INSERT INTO assignments VALUES (1, 1, 1, 0, 'open', 1, 1, '2024-01-01'),"
                          " (2, 1, 2, 1, 'done', 1, 1, '2024-01-01'), (3, 1, 3, NULL, 'skipped', 0, 1, '2024-01-01')"))
    migrate(db)
    with db.engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, held FROM pairs")).all()) == {1: 2, 2: 0}
    db.close()

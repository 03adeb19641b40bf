"""The migrations build exactly the ORM's schema (SQLite and PostgreSQL); the app never imports torch."""
from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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

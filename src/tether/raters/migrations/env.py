"""Alembic environment: runs on the connection `tether.raters.db.migrate` passes in (no alembic.ini)."""
from alembic import context

from tether.raters.db import Base

connection = context.config.attributes["connection"]
# batch mode: SQLite cannot ALTER most things in place, so later migrations copy tables instead
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

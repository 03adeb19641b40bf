"""The rater app's tables (SQLAlchemy 2 typed ORM), its engine factory and its migrations.

One database holds one project. Two unique constraints carry the assignment rules, so they hold under
concurrency on SQLite and PostgreSQL alike, without locks in application code:

    assignments UNIQUE(pair_id, slot)      slots 0..k-1: at most k raters hold a pair at once
    assignments UNIQUE(pair_id, rater_id)  a rater never gets the same pair twice

`pairs.held` mirrors the number of non-NULL slots of a pair (a cache for picking, see `Pair`).

A skipped or expired assignment gives its slot back (slot = NULL; NULLs never collide in a UNIQUE
index) but keeps its row, so that rater still never sees the pair again. A rating's `submission_id`
is UNIQUE too: a retried submit finds the row it already made.

Times are naive UTC datetimes (SQLite keeps no time zone; mixing aware and naive values breaks
comparisons). Schema changes go through Alembic (`migrations/`); `migrate` upgrades to head.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tether.errors import ConfigError

DB_FILE = "raters.db"
MAX_ID = 2**31 - 1
"""The largest row id: ids are 32-bit INTEGER columns on PostgreSQL, so larger numbers name no row."""
SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the lock before failing (writers queue one after another)."""


PROMOTED_AT = "promoted_to_gold_at"
"""Pair meta key: when an admin promoted the pair to gold (naive UTC ISO time); earlier votes are labels, not answers."""


def promoted_at(meta: dict | None) -> datetime | None:
    """When the pair was promoted to gold (PROMOTED_AT in its meta), or None for a pair imported as gold or regular."""
    value = (meta or {}).get(PROMOTED_AT)
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Project(Base):
    """The project's settings; one row. `overlap` (k) is frozen once a pair has been served."""

    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    overlap: Mapped[int] = mapped_column(Integer)
    gold_rate: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    criteria: Mapped[list | None] = mapped_column(JSON)
    """Names of the per-criterion questions asked beside the overall vote (e.g. helpful, honest, harmless)."""
    daily_target: Mapped[int | None] = mapped_column(Integer)
    """Ratings a rater is asked for per (UTC) day, shown as "12 of 40 today"; None: no target."""
    __table_args__ = (CheckConstraint("overlap >= 1", name="ck_project_overlap"),
                      CheckConstraint("gold_rate >= 0 AND gold_rate < 1", name="ck_project_gold_rate"))


class User(Base):
    """An admin or a rater. `password_hash` is NULL until the user accepts their invite."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (CheckConstraint("role IN ('admin', 'rater')", name="ck_users_role"),)


class Invite(Base):
    """A one-time link that lets a user set their password; only the token's HMAC is stored."""

    __tablename__ = "invites"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)


class LoginSession(Base):
    """A signed-in browser or API client; the cookie holds the token, the table its HMAC."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class LoginAttempt(Base):
    """A failed login, kept for the rate limit (failures per username and client address)."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Guideline(Base):
    """One version of the rating guidelines (Markdown); the newest row is the current version."""

    __tablename__ = "guidelines"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    markdown: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Acknowledgement(Base):
    """A user has read and accepted one guideline version."""

    __tablename__ = "acknowledgements"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    guideline_id: Mapped[int] = mapped_column(ForeignKey("guidelines.id"))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (UniqueConstraint("user_id", "guideline_id", name="uq_ack_user_guideline"),)


class Pair(Base):
    """A queue item: one comparison to rate. `key` is `Comparison.id`; gold pairs carry their answer.

    `held` is the number of slots taken (assignments with a slot), kept in step by every write that
    takes or frees a slot, in the same transaction: picking a pair is then an index seek on
    (is_gold, held, id) rather than a count over all assignments per pair.
    """

    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    prompt: Mapped[Any] = mapped_column(JSON)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    source_a: Mapped[str | None] = mapped_column(String(500))
    source_b: Mapped[str | None] = mapped_column(String(500))
    meta: Mapped[dict] = mapped_column(JSON)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    gold_choice: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    held: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    set_aside: Mapped[str | None] = mapped_column(String(200))
    """Why the pair is never served (it cannot be rendered, or an admin took it out); None: in the queue."""
    adjudication: Mapped[str | None] = mapped_column(String(3))
    """An admin's verdict on a pair whose raters disagreed (A, B or tie); exported beside the votes."""
    __table_args__ = (CheckConstraint("gold_choice IS NULL OR gold_choice IN ('A', 'B', 'tie')",
                                      name="ck_pairs_gold_choice"),
                      Index("ix_pairs_pick", "is_gold", "held", "id"))


class Assignment(Base):
    """A pair shown to one rater, in a random left/right order (`left_is_a`, to measure position bias).

    state: open (waiting for a rating), done, skipped, expired. Gold pairs take no slot.
    """

    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10), default="open", index=True)
    left_is_a: Mapped[bool] = mapped_column(Boolean)
    guideline_id: Mapped[int] = mapped_column(ForeignKey("guidelines.id"))
    shown_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (UniqueConstraint("pair_id", "slot", name="uq_assignment_pair_slot"),
                      UniqueConstraint("pair_id", "rater_id", name="uq_assignment_pair_rater"),
                      CheckConstraint("state IN ('open', 'done', 'skipped', 'expired')", name="ck_assignment_state"))


class Rating(Base):
    """A rater's verdict on an assignment, mapped back to A/B whatever the display order was."""

    __tablename__ = "ratings"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    choice: Mapped[str] = mapped_column(String(4))
    strength: Mapped[float | None] = mapped_column(Float)
    rationale: Mapped[str | None] = mapped_column(String(500))
    guideline_version: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    submission_id: Mapped[str] = mapped_column(String(64), unique=True)
    criteria: Mapped[dict | None] = mapped_column(JSON)
    """Per-criterion verdicts as A/B/tie, e.g. {"helpful": "A", "harmless": "tie"}; None when none asked."""
    skip_reason: Mapped[str | None] = mapped_column(String(20))
    """Why a pair was skipped (see service.SKIP_REASONS); None for a rating or a skip without a reason."""
    __table_args__ = (CheckConstraint("choice IN ('A', 'B', 'tie', 'skip')", name="ck_ratings_choice"),)


# ------------------------------------------------------------------------------------------------ engines


def database_url(project_dir: str | Path, db: str | None = None) -> str:
    """The SQLAlchemy URL: `db` if given (postgresql:// or sqlite:///), else SQLite in the project folder."""
    if db is None:
        return f"sqlite:///{Path(project_dir).resolve() / DB_FILE}"
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]  # psycopg 3, not the default psycopg2
    if db.startswith(("postgresql+psycopg://", "sqlite:///")):
        return db
    raise ConfigError(f"db: expected a postgresql://... or sqlite:///... URL, got {db.split('://')[0]!r}...")


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout, foreign keys and IMMEDIATE write transactions.

    Why IMMEDIATE: a deferred SQLite transaction that reads, then writes after another connection
    committed, fails at once with SQLITE_BUSY (the busy timeout does not apply to a stale snapshot).
    Taking the write lock at BEGIN makes writers queue instead; readers in WAL mode are never blocked.
    Use `engine.execution_options(sqlite_write=True)` for transactions that write.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=10, max_overflow=0, pool_pre_ping=True)
    path = Path(url.removeprefix("sqlite:///"))
    if url.startswith("sqlite:///") and not path.exists():
        path.touch(mode=0o600)  # password and session hashes: the owner's eyes only (WAL files inherit it)
    # as many pooled connections as the server has worker threads (40): no reconnect churn under load
    engine = create_engine(url, pool_size=40, max_overflow=10, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: the next pragma may wait for a lock
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # WAL is persistent: set it once
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses at most the last commits
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "BEGIN")

    return engine


class Database:
    """An engine and two session factories: `read()` for plain transactions, `write()` for writing ones.

    Both are context managers that commit on success and roll back on an exception.
    """

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = make_engine(url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(sqlite_write=True), expire_on_commit=False)
        self._write_lock = threading.Lock() if self.is_sqlite else nullcontext()

    def read(self) -> AbstractContextManager[Session]:
        return self._read.begin()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A writing transaction. On SQLite, this process's writers first queue on a lock: SQLite's own
        busy handler polls with growing sleeps and no fairness, so under load one writer can starve
        past the busy timeout ("database is locked"); the busy timeout then only covers other processes."""
        with self._write_lock:
            with self._write.begin() as session:
                yield session

    def close(self) -> None:
        self.engine.dispose()


def migrate(db: Database) -> None:
    """Upgrade the database to the newest schema with the Alembic scripts shipped in this package."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with db.engine.execution_options(sqlite_write=True).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

"""Helpers and fixtures of the rater-app tests (re-exported by conftest.py): a project on SQLite, a live server, PostgreSQL.

Tests that need PostgreSQL or Chromium skip with the reason when they are unavailable, unless
TETHER_REQUIRE_SERVICES=1 (set by CI in .ci/run), where they fail instead: CI must never skip them.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from argon2 import PasswordHasher

from tether.data.preferences import Comparison
from tether.raters.accounts import Accounts
from tether.raters.db import Database, database_url, migrate
from tether.raters.security import Passwords, load_or_create_secret
from tether.raters.service import RaterService

# argon2 at its lowest cost: the tests check the flows, not the hash's strength (the app's default is RFC 9106)
# and a hashing gate wide enough that parallel sign-ins of the load tests are never refused (test_rater_attacks
# tests the gate itself)
FAST = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1), slots=8, waiting=64)
PASSWORD = "a long enough password"
GUIDELINES = "# Rate well\n\nPrefer the **correct** answer."


def need(available: bool, reason: str) -> None:
    """Skip (printing why) when a service is unavailable; fail instead under TETHER_REQUIRE_SERVICES=1."""
    if available:
        return
    if os.environ.get("TETHER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (TETHER_REQUIRE_SERVICES=1: CI must run this test)")
    pytest.skip(reason)


def make_queue(n: int, tag: str = "q") -> list[Comparison]:
    return [Comparison(f"Question {tag}{i}: what is the capital of Country{i}?", f"Capital {i}a.", f"I think it is {i}b.",
                       source_a="policy-a", source_b="policy-b", meta={"round": 1}) for i in range(n)]


@dataclass
class Project:
    """A project folder with its database, service and accounts."""

    dir: Path
    db: Database
    service: RaterService
    accounts: Accounts

    def rater(self, name: str, password: str | None = None, ack: bool = True) -> int:
        """Create a rater (with a password via an invite if given) who has acknowledged the guidelines."""
        if password is not None:
            self.accounts.accept_invite(self.accounts.invite(name), password)
        user_id = self.accounts.add_user(name)
        if ack:
            self.service.acknowledge(user_id, self.service.current_guideline().version)
        return user_id


def open_project(folder: Path, db_url: str | None = None, overlap: int = 3, gold_rate: float = 0.0) -> Project:
    folder.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(folder)
    db = Database(database_url(folder, db_url))
    migrate(db)
    project = Project(folder, db, RaterService(db, folder), Accounts(db, secret, FAST))
    project.service.create_project("test project", overlap, gold_rate)
    project.service.add_guideline("1", GUIDELINES)
    return project


@pytest.fixture
def project(tmp_path) -> Iterator[Project]:
    p = open_project(tmp_path / "project")
    yield p
    p.db.close()


# -- PostgreSQL ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server (pgserver's wheel binaries) for the whole run, on a Unix socket.

    Yields the server, or the reason it is unavailable (a string). Its folder is outside pytest's
    tmp_path: as root, pgserver runs postgres as another user, who cannot enter pytest's 0700 folders.
    """
    folder = tempfile.mkdtemp(prefix="tether-pg-")
    try:
        with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (as root)
            warnings.simplefilter("ignore")
            import pgserver
            server = pgserver.get_server(folder, cleanup_mode="stop")
        # throwaway data: no fsync, so CREATE DATABASE and the shutdown checkpoint take milliseconds, not seconds
        server.psql("ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;")
        server.psql("SELECT pg_reload_conf();")
    except Exception as err:  # no wheel for this platform, initdb refused, ...
        shutil.rmtree(folder, ignore_errors=True)
        yield f"PostgreSQL (pgserver) unavailable: {type(err).__name__}: {err}"
        return
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def new_pg_database(server) -> str:
    """The postgresql:// URL of a fresh, empty database on `server`."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    return urlunsplit(urlsplit(server.get_uri())._replace(path=f"/{name}"))


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    need(not isinstance(pg_server, str), str(pg_server))
    return new_pg_database(pg_server)


# -- a live server ------------------------------------------------------------------------------------------


@dataclass
class Live:
    url: str
    project: Project
    app: object


def serve(app, forwarded_allow_ips: str | None = None) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread, configured as `tether raters serve` does;
    yields the base URL."""
    import uvicorn

    from tether.raters.cli import uvicorn_config

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else delayed ACKs add ~40 ms per request
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, forwarded_allow_ips=forwarded_allow_ips, timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def live_server(folder: Path, db_url: str | None = None, overlap: int = 3, gold_rate: float = 0.0,
                forwarded_allow_ips: str | None = None, public_url: str | None = None) -> Iterator[Live]:
    from tether.raters.web import create_app

    p = open_project(folder, db_url, overlap, gold_rate)
    app = create_app(folder, db_url, passwords=FAST, public_url=public_url)
    try:
        for url in serve(app, forwarded_allow_ips):
            yield Live(url, p, app)
    finally:
        app.state.ctx.db.close()
        p.db.close()


@pytest.fixture
def live(tmp_path) -> Iterator[Live]:
    """A served project on SQLite with 3 raters per pair."""
    yield from live_server(tmp_path / "project")


def api_login(url: str, username: str, password: str = PASSWORD) -> httpx.Client:
    """An httpx client signed in through the API, sending its CSRF token on every request."""
    client = httpx.Client(base_url=url, timeout=30)
    for _ in range(300):  # 503: password hashing is full; a client waits and retries
        r = client.post("/api/login", json={"username": username, "password": password})
        if r.status_code != 503:
            break
        time.sleep(float(r.headers.get("retry-after", "1")) / 10)
    assert r.status_code == 200, r.text
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return client


# -- load ---------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    statuses: Counter
    next_ms: list[float]
    submit_ms: list[float]
    errors: list[str]
    seconds: float
    undone: int = 0

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        s = sorted(values)
        return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def run_load(url: str, usernames: list[str], per_rater: int, undo_every: int = 0) -> LoadResult:
    """Every rater signs in, then all at once take and rate `per_rater` pairs over HTTP (one thread each).

    Each rating is GET /api/next then POST /api/ratings with a fresh submission id; latencies in ms. With
    `undo_every` = n, every n-th rating of the odd-numbered raters is taken back (POST /api/ratings/undo)
    and rated again: GET /api/next must give the same assignment back, and the totals stay the same.
    """
    result = LoadResult(Counter(), [], [], [], 0.0)
    lock = threading.Lock()
    start = threading.Barrier(len(usernames) + 1)

    def redo(client: httpx.Client, name: str, assignment_id: int) -> None:
        """Undo the rating just made, check the pair comes back first, and rate it again (the other side)."""
        u = client.post("/api/ratings/undo")
        back = client.get("/api/next").json().get("assignment") or {}
        again = client.post("/api/ratings", json={"assignment_id": assignment_id, "choice": "right",
                                                  "submission_id": uuid.uuid4().hex})
        with lock:
            result.statuses.update([u.status_code, again.status_code])
            result.undone += 1
            if u.status_code != 200 or back.get("assignment_id") != assignment_id or again.status_code != 201:
                result.errors.append(f"{name}: undo {u.status_code} {u.text[:100]}, back {back.get('assignment_id')} "
                                     f"for {assignment_id}, re-rate {again.status_code}")

    def rater(name: str) -> None:
        index = usernames.index(name)
        done: list[int] = []
        try:
            client = api_login(url, name)
        finally:
            start.wait()
        try:
            for _ in range(per_rater):
                t0 = time.perf_counter()
                r = client.get("/api/next")
                t1 = time.perf_counter()
                task = r.json().get("assignment") if r.status_code == 200 else None
                if task is None:
                    with lock:
                        result.statuses[r.status_code] += 1
                        result.errors.append(f"{name}: no pair ({r.status_code} {r.text[:200]})")
                    return
                body = {"assignment_id": task["assignment_id"], "choice": "left", "strength": 1.0,
                        "submission_id": uuid.uuid4().hex}
                s = client.post("/api/ratings", json=body)
                t2 = time.perf_counter()
                with lock:
                    result.statuses.update([r.status_code, s.status_code])
                    result.next_ms.append(1000 * (t1 - t0))
                    result.submit_ms.append(1000 * (t2 - t1))
                if undo_every and index % 2 and len(done) % undo_every == undo_every - 1:
                    redo(client, name, task["assignment_id"])
                done.append(task["assignment_id"])
        finally:
            client.close()

    def guarded(name: str) -> None:
        try:
            rater(name)
        except Exception as err:  # noqa: BLE001 - reported in the result
            with lock:
                result.errors.append(f"{name}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=guarded, args=(name,)) for name in usernames]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - began
    return result

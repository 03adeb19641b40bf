"""Regression tests of the rater app's security review (issue 18, findings 1-5): each failed before its fix.

1 lockout of the right password by strangers, 2 unbounded argon2 work, 3 unbounded request bodies,
4 pairs that cannot be rendered, 5 accounts that cannot be revoked. Findings 6-10: test_rater_hardening.py.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from raterkit import FAST, PASSWORD, api_login, make_queue
from sqlalchemy import insert, select, update

from tether.cli import main
from tether.errors import DataError
from tether.raters.accounts import ADDRESS_FAILURES, ALERT_FAILURES, LOGIN_FAILURES, address_key
from tether.raters.db import Assignment, LoginAttempt, LoginSession, Pair, User
from tether.raters.errors import Busy, Conflict, RateLimited, Unauthorized
from tether.raters.security import Passwords


def outcome(project, username: str, password: str, address: str) -> str:
    try:
        project.accounts.login(username, password, address)
    except (RateLimited, Unauthorized, Busy) as err:
        return type(err).__name__
    return "signed in"


# -- 1. lockout ------------------------------------------------------------------------------------------------


def test_strangers_cannot_lock_out_the_right_password(project):
    project.accounts.set_password("boss", PASSWORD, role="admin")
    # 40 wrong guesses for the admin from 40 addresses: the old per-username cap (20) locked everyone out
    spread = [outcome(project, "boss", "wrong password", f"10.0.1.{i}") for i in range(40)]
    assert spread == ["Unauthorized"] * 40
    assert outcome(project, "boss", PASSWORD, "192.168.7.7") == "signed in"  # the admin, from elsewhere
    # one address is still throttled per username ...
    here = [outcome(project, "boss", "wrong password", "10.0.2.1") for _ in range(LOGIN_FAILURES + 1)]
    assert here == ["Unauthorized"] * LOGIN_FAILURES + ["RateLimited"]
    assert outcome(project, "boss", PASSWORD, "10.0.2.1") == "RateLimited"
    # ... and the admin dashboard says who is being guessed at, from how many addresses
    alerts = project.accounts.login_alerts()
    assert [(a.username, a.failures, a.addresses) for a in alerts] == [("boss", 45, 41)]
    assert ALERT_FAILURES <= 45


def test_one_address_is_throttled_over_all_usernames_before_any_hashing(project):
    project.rater("carol", PASSWORD)
    calls = []
    real = project.accounts.passwords.verify
    project.accounts.passwords.verify = lambda stored, pw: (calls.append(1), real(stored, pw))[1]
    names = [f"nobody{i}" for i in range(ADDRESS_FAILURES)]  # a new unknown name each time
    assert [outcome(project, n, "guess guess", "10.9.9.9") for n in names] == ["Unauthorized"] * ADDRESS_FAILURES
    assert len(calls) == ADDRESS_FAILURES
    assert outcome(project, "nobody-else", "guess guess", "10.9.9.9") == "RateLimited"
    assert outcome(project, "carol", PASSWORD, "10.9.9.9") == "RateLimited"
    assert len(calls) == ADDRESS_FAILURES  # refused without hashing
    assert outcome(project, "carol", PASSWORD, "10.9.9.10") == "signed in"  # the next address is not affected
    assert project.accounts.blocked_addresses() == [("10.9.9.9", ADDRESS_FAILURES)]  # shown on the dashboard


def test_ipv6_clients_are_counted_per_64_network():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3" and address_key("10.1.2.3") == "10.1.2.3"
    assert address_key("unknown") == "unknown"


def test_the_dashboard_warns_admins_of_guessing(live):
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    with p.db.write() as s:  # 25 failures from 5 addresses, as a spread attack leaves them; 30 from one address
        s.execute(insert(LoginAttempt), [{"username": "boss", "address": f"10.3.0.{i % 5}"} for i in range(25)])
        s.execute(insert(LoginAttempt), [{"username": f"u{i}", "address": "10.4.0.1"} for i in range(ADDRESS_FAILURES)])
    client = httpx.Client(base_url=live.url)
    from test_rater_http import browser_login
    html = browser_login(live.url, "boss").get("/admin").text
    assert 'data-alert="boss"' in html and "25 failed sign-ins for <b>boss</b> from 5 address(es)" in html
    assert f"Sign-ins from 10.4.0.1 are refused for up to 15 minutes: {ADDRESS_FAILURES} failed" in html
    client.close()


# -- 2. argon2 load ----------------------------------------------------------------------------------------------


class SlowHasher:
    """A stand-in for argon2 that takes 0.2 s and records how many run at once."""

    def __init__(self):
        self.running = self.most = 0
        self.lock = threading.Lock()

    def hash(self, password: str) -> str:
        return "$slow$" + password

    def verify(self, stored: str, password: str) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        return stored == "$slow$" + password


def test_password_hashing_is_bounded_and_the_excess_refused_at_once():
    slow = SlowHasher()
    passwords = Passwords(slow, slots=2, waiting=2)

    def check(_: int) -> str:
        t0 = time.perf_counter()
        try:
            passwords.verify(None, "guess")
            return "checked"
        except Busy:
            return f"busy {time.perf_counter() - t0:.2f}"

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(check, range(12)))
    assert slow.most == 2  # never more than `slots` hashes at once (unbounded, all 12 ran together)
    assert results.count("checked") == 4  # 2 running + 2 waiting
    assert all(float(r.split()[1]) < 0.1 for r in results if r.startswith("busy"))  # refused without waiting


def test_a_busy_login_answers_503_with_retry_after(project, tmp_path):
    from fastapi.testclient import TestClient

    from tether.raters.web import create_app

    class Full:  # every hashing slot taken, and the queue full
        def full(self):
            return True

        def run(self, fn):
            raise Busy("login: the server is busy")

    project.rater("carol", PASSWORD)
    passwords = Passwords(FAST.hasher)
    passwords.gate = Full()
    app = create_app(project.dir, passwords=passwords)
    with TestClient(app) as client:
        r = client.post("/api/login", json={"username": "carol", "password": PASSWORD})
    assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.headers["x-frame-options"] == "DENY"
    with project.db.read() as s:
        assert s.scalar(select(LoginAttempt.id)) is None  # refused before any database write
    app.state.ctx.db.close()


# -- 3. request bodies ---------------------------------------------------------------------------------------------


def test_large_bodies_get_413_before_they_are_read(live):
    big = json.dumps({"username": "x", "password": "y" * (2 << 20)})
    r = httpx.post(f"{live.url}/api/login", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"].startswith("request body: larger than 1,048,576 bytes")
    assert r.headers["x-content-type-options"] == "nosniff"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"username": "x", "password": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = httpx.post(f"{live.url}/api/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    form = httpx.post(f"{live.url}/login", data={"username": "x", "password": "y" * (2 << 20)})
    assert form.status_code == 413
    assert httpx.post(f"{live.url}/api/login", json={"username": "x", "password": "y" * 100}).status_code == 401


# -- 4. pairs that cannot be rendered ---------------------------------------------------------------------------------


def write_jsonl(path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_import_names_the_line_and_field_of_a_lone_surrogate(project, tmp_path):
    good = '{"prompt": "Fine?", "response_a": "yes", "response_b": "no"}'
    cases = {  # JSON escapes: the file is valid UTF-8, the decoded string is not valid Unicode
        '{"prompt": "Bad \\ud800 prompt", "response_a": "a", "response_b": "b"}': "prompt: not valid Unicode",
        '{"prompt": [{"role": "user", "content": "x\\udfff"}], "response_a": "a", "response_b": "b"}':
            "prompt[0].content: not valid Unicode",
        '{"prompt": "p", "response_a": "a", "response_b": "b", "meta": {"note": ["ok", "\\ud83d"]}}':
            "meta.note[1]: not valid Unicode",
        '{"prompt": "p", "response_a": "a\\u0000", "response_b": "b"}': "response_a: contains a NUL character",
    }
    for n, (row, message) in enumerate(cases.items()):
        path = tmp_path / f"q{n}.jsonl"
        write_jsonl(path, [good, row])
        with pytest.raises(DataError, match=f"^{path}:2: {message.replace('[', '.').replace(']', '.')}"):
            project.service.import_queue(path)
    with project.db.read() as s:
        assert s.scalar(select(Pair.id)) is None  # nothing half-imported


def test_the_cli_reports_a_surrogate_row_without_an_id_in_one_line(tmp_path, capsys):
    project, queue = tmp_path / "p", tmp_path / "poison.jsonl"
    assert main(["raters", "init", str(project)]) == 0
    write_jsonl(queue, ['{"prompt": "Bad \\ud800", "response_a": "a", "response_b": "b"}'])  # no id: hashed
    code = main(["raters", "import", str(project), str(queue)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {queue}:1: prompt: not valid Unicode (a lone surrogate at character 5)\n"


def test_a_stored_pair_that_cannot_render_is_set_aside_not_served(live):
    p = live.project
    p.rater("alice", PASSWORD)
    p.service.add_pairs(make_queue(3))
    # a JSON prompt holds a lone surrogate (json.dumps escapes it; a TEXT column could not): as imports before the fix
    with p.db.write() as s:  # left them. Pair 1 comes first (2 of 3 slots held)
        s.execute(update(Pair).where(Pair.id == 1).values(prompt="Poison \ud800", held=2))
    alice = api_login(live.url, "alice")
    first = alice.get("/api/next")
    assert first.status_code == 200 and first.json()["assignment"]["prompt"].startswith("Question q1")
    with p.db.read() as s:
        poison = s.get(Pair, 1)
        assert poison.set_aside == "its text cannot be shown (invalid Unicode)"
        assert s.scalar(select(Assignment.id).where(Assignment.pair_id == 1)) is None  # never given out
    from test_rater_http import browser_login
    bob_page = browser_login(live.url, "alice")
    assert bob_page.get("/rate").status_code == 200
    # a rater already holding it (assigned before the fix) is moved on, not stuck
    p.rater("bob", PASSWORD)
    bob = p.accounts.add_user("bob")
    with p.db.write() as s:
        s.execute(update(Pair).where(Pair.id == 3).values(prompt=[{"role": "user", "content": "Bad \udfff"}], held=1))
        s.execute(insert(Assignment).values(pair_id=3, rater_id=bob, slot=0, state="open", left_is_a=True,
                                            guideline_id=1))
    task = api_login(live.url, "bob").get("/api/next")
    assert task.status_code == 200 and task.json()["assignment"]["prompt"].startswith("Question q1")
    with p.db.read() as s:
        assert s.scalar(select(Assignment.state).where(Assignment.pair_id == 3)) == "expired"
        assert s.get(Pair, 3).set_aside is not None and s.get(Pair, 3).held == 0


# -- 5. revoking an account ------------------------------------------------------------------------------------------


def test_an_admin_deactivates_and_reactivates_a_rater(live):
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    p.rater("alice", PASSWORD)
    p.service.add_pairs(make_queue(1))
    p.service.configure(overlap=1)
    boss, alice = api_login(live.url, "boss"), api_login(live.url, "alice")
    assert alice.get("/api/next").json()["assignment"] is not None  # alice holds the only slot
    r = boss.post("/api/admin/users/active", json={"username": "alice", "active": False})
    assert r.status_code == 200 and r.json() == {"username": "alice", "active": False, "released": 1}
    assert alice.get("/api/next").status_code == 401  # her session ended at once
    assert httpx.post(f"{live.url}/api/login", json={"username": "alice", "password": PASSWORD}).status_code == 401
    with p.db.read() as s:
        assert s.scalar(select(Assignment.state)) == "expired" and s.scalar(select(Pair.held)) == 0
        assert s.scalar(select(LoginSession.id).join(User).where(User.username == "alice")) is None
    p.rater("bob", PASSWORD)
    assert api_login(live.url, "bob").get("/api/next").json()["assignment"] is not None  # the slot is free again
    invite = p.accounts.invite("alice")  # a re-invite does not bring a deactivated account back
    assert httpx.get(f"{live.url}/invite/{invite}").status_code == 404
    r = boss.post("/api/admin/users/active", json={"username": "alice", "active": True})
    assert r.json()["active"] is True
    assert api_login(live.url, "alice").get("/api/guidelines").status_code == 200  # her old password
    last = boss.post("/api/admin/users/active", json={"username": "boss", "active": False})
    assert last.status_code == 409 and "last active admin" in last.json()["detail"]


def test_deactivate_and_reactivate_from_the_cli_and_the_admin_page(live, capsys):
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    p.rater("alice", PASSWORD)
    assert main(["raters", "deactivate", str(p.dir), "alice"]) == 0
    assert "alice deactivated: signed out, invites void, 0 open pair(s)" in capsys.readouterr().out
    with p.db.read() as s:
        assert s.scalar(select(User.active).where(User.username == "alice")) is False
    assert main(["raters", "reactivate", str(p.dir), "alice"]) == 0
    assert main(["raters", "deactivate", str(p.dir), "nobody"]) == 2
    assert "error: username: no user 'nobody'" in capsys.readouterr().err
    from test_rater_http import browser_login, form_token
    page = browser_login(live.url, "boss")
    csrf = form_token(page.get("/admin").text, "csrf_token")
    r = page.post("/admin/users/active", data={"csrf_token": csrf, "username": "alice", "active": "false"})
    assert r.status_code == 200 and "alice is deactivated" in r.text
    with p.db.read() as s:
        assert s.scalar(select(User.active).where(User.username == "alice")) is False
    with pytest.raises(Conflict):
        p.accounts.set_active("boss", False)


def test_a_login_refused_as_busy_is_not_counted_as_a_failure(project):
    """50 raters behind one address signing in at once: the ones told "busy" made no guess (the load run found
    them counted, until the address was throttled)."""

    class FullAfterAdmission:
        def full(self):
            return False

        def run(self, fn):
            raise Busy("login: the server is busy")

    project.rater("carol", PASSWORD)
    project.accounts.passwords = Passwords(FAST.hasher)
    project.accounts.passwords.gate = FullAfterAdmission()
    for _ in range(ADDRESS_FAILURES + 1):
        assert outcome(project, "carol", PASSWORD, "10.7.7.7") == "Busy"
    with project.db.read() as s:
        assert s.scalar(select(LoginAttempt.id)) is None


def test_pairs_added_from_code_are_checked_too(project):
    from tether.data.preferences import Comparison
    from tether.raters.errors import Invalid

    with pytest.raises(Invalid, match=r"prompt\[0\].content: not valid Unicode"):
        project.service.add_pairs([Comparison([{"role": "user", "content": "x\udc00"}], "a", "b", id="p1")])
    # a NUL (a tiny random model writes one now and then) renders, and SQLite stores it; PostgreSQL would refuse it
    assert project.service.add_pairs([Comparison("p", "a\x00", "b", id="p2")]).added == 1

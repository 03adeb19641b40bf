"""Regression tests of the rater app's security review (issue 18, findings 6-10): each failed before its fix.

6 proxy headers trusted from any loopback client, 7 NaN/Infinity and crashes without the security
headers, 8 a rating on an expired assignment dropped silently, 9 another port of the same host making a
rater take a pair, 10 world-readable, overwritten exports and invite links built from the Host header.
"""
from __future__ import annotations

import stat

import httpx
import pytest
from fastapi.testclient import TestClient
from raterkit import FAST, PASSWORD, api_login, live_server, make_queue
from sqlalchemy import func, select
from test_rater_http import browser_login, form_token

from tether.raters.db import Assignment, LoginAttempt, Rating
from tether.raters.errors import Conflict


def failed_login_addresses(project) -> list[str]:
    with project.db.read() as s:
        return list(s.scalars(select(LoginAttempt.address)))


# -- 6. proxy headers ---------------------------------------------------------------------------------------------


def test_forwarded_headers_are_ignored_unless_the_proxy_is_configured(live):
    live.project.rater("alice", PASSWORD)
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    r = httpx.post(f"{live.url}/api/login", json={"username": "alice", "password": "wrong one!"}, headers=spoof)
    assert r.status_code == 401 and failed_login_addresses(live.project) == ["127.0.0.1"]
    r = httpx.post(f"{live.url}/api/login", json={"username": "alice", "password": PASSWORD}, headers=spoof)
    assert "secure" not in r.headers["set-cookie"].lower()


def test_a_configured_proxy_is_trusted(tmp_path):
    for live in live_server(tmp_path / "p", forwarded_allow_ips="127.0.0.1"):
        live.project.rater("alice", PASSWORD)
        spoof = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        httpx.post(f"{live.url}/api/login", json={"username": "alice", "password": "wrong one!"}, headers=spoof)
        assert failed_login_addresses(live.project) == ["203.0.113.9"]
        r = httpx.post(f"{live.url}/api/login", json={"username": "alice", "password": PASSWORD}, headers=spoof)
        assert "secure" in r.headers["set-cookie"].lower()


def test_the_serve_command_trusts_no_proxy_by_default():
    from tether.raters.cli import _parser, uvicorn_config

    args = _parser().parse_args(["serve", "p"])
    config = uvicorn_config(object(), args.host, args.port, args.forwarded_allow_ips)
    assert config.proxy_headers is False
    assert uvicorn_config(object(), forwarded_allow_ips="10.0.0.2").forwarded_allow_ips == "10.0.0.2"


# -- 7. NaN, Infinity and crashes keep the headers -----------------------------------------------------------------------


def test_nan_and_infinity_literals_get_422_with_the_security_headers(live):
    live.project.rater("alice", PASSWORD)
    alice = api_login(live.url, "alice")
    for path, body in (("/api/login", '{"username": NaN, "password": Infinity}'),
                       ("/api/ratings", '{"assignment_id": 1, "choice": "left", "strength": NaN, "submission_id": "nan-0001"}'),
                       ("/api/ratings", '{"assignment_id": -Infinity, "choice": "left", "submission_id": "nan-0002"}'),
                       ("/api/admin/settings", '{"gold_rate": NaN}')):
        r = alice.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code in (403, 422), (path, r.status_code, r.text)
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors" in r.headers["content-security-policy"]


def test_an_unexpected_crash_keeps_the_security_headers(project):
    from tether.raters.web import create_app

    app = create_app(project.dir, passwords=FAST)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    app.state.ctx.db.close()


# -- 8. a rating on an expired assignment ---------------------------------------------------------------------------------


def test_a_form_rating_on_an_expired_assignment_says_it_was_not_saved(live):
    p = live.project
    p.rater("alice", PASSWORD)
    p.service.add_pairs(make_queue(2))
    page = browser_login(live.url, "alice")
    html = page.get("/rate").text
    p.service.release_stale(ttl=__import__("datetime").timedelta(0), force=True)  # the hour passed
    r = page.post("/rate", data={"csrf_token": form_token(html, "csrf_token"), "vote": "left",
                                 "assignment_id": form_token(html, "assignment_id"), "submission_id": "late-0001"})
    assert r.status_code == 303 and r.headers["location"] == "/rate?notice=expired"
    shown = page.get(r.headers["location"]).text
    assert "Your last rating was not saved" in shown
    assert "Your last rating was not saved" not in page.get("/rate?notice=<b>made up</b>").text
    with p.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 0


# -- 9. same-site is not same-origin ------------------------------------------------------------------------------------


def test_a_page_on_another_port_cannot_make_a_rater_take_a_pair(live):
    live.project.rater("alice", PASSWORD)
    live.project.service.add_pairs(make_queue(2))
    page, alice = browser_login(live.url, "alice"), api_login(live.url, "alice")
    other_port = {"Sec-Fetch-Site": "same-site"}  # what a browser sends from http://127.0.0.1:9999 to this app
    r = page.get("/rate", headers=other_port)
    assert r.status_code == 200 and "no pair was taken" in r.text
    assert alice.get("/api/next", headers=other_port).status_code == 403
    with live.project.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Assignment)) == 0
    assert "Left much better" in page.get("/rate", headers={"Sec-Fetch-Site": "none"}).text  # typed or bookmarked


# -- 10. exports and invite links ------------------------------------------------------------------------------------------


def test_exports_are_private_and_never_silently_overwritten(project):
    uid = project.rater("alice")
    project.service.add_pairs(make_queue(1))
    task = project.service.next_assignment(uid)
    project.service.submit_rating(uid, task.assignment_id, "left", submission_id="exp-00001")
    path, n = project.service.export("ratings.jsonl")
    assert n == 1 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_text()
    path.write_text("the analyst's edited copy\n")
    with pytest.raises(Conflict, match="exports/ratings.jsonl exists"):
        project.service.export("ratings.jsonl", "trl")
    assert path.read_text() == "the analyst's edited copy\n"
    project.service.export("ratings.jsonl", overwrite=True)
    assert path.read_text() == before and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_invite_links_use_the_public_url_not_the_host_header(tmp_path):
    for live in live_server(tmp_path / "p", public_url="https://rate.example.org"):
        p = live.project
        p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
        boss = api_login(live.url, "boss")
        r = boss.post("/api/admin/invites", json={"username": "newbie"}, headers={"Host": "evil.example"})
        assert r.json()["invite_url"].startswith("https://rate.example.org/invite/")
        page = browser_login(live.url, "boss")
        html = page.post("/admin/invites", headers={"Host": "evil.example"},
                         data={"csrf_token": form_token(page.get("/admin").text, "csrf_token"), "username": "n2"}).text
        assert "https://rate.example.org/invite/" in html and "evil.example" not in html


def test_without_a_public_url_invite_links_use_the_listening_address(live):
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    r = api_login(live.url, "boss").post("/api/admin/invites", json={"username": "x1"}, headers={"Host": "evil.example"})
    assert r.json()["invite_url"].startswith(f"{live.url}/invite/")

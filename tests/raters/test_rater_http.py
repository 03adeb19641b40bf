"""The rater app's security over HTTP, against a real uvicorn server on loopback (httpx clients)."""
from __future__ import annotations

import os
import re
import stat

import httpx
import pytest
from raterkit import PASSWORD, api_login, make_queue
from sqlalchemy import func, inspect, select

from tether.data.preferences import Comparison
from tether.errors import ConfigError
from tether.raters.db import Assignment, Rating, User
from tether.raters.security import SECRET_FILE, load_or_create_secret

XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "</script><script>alert(3)</script>",
       '<a href="javascript:alert(4)">click me</a>']
SQLI = ["' OR '1'='1", "1; DROP TABLE ratings; --", '" OR 1=1 --', "admin'--",
        "1 UNION SELECT password_hash FROM users", "%' AND 1=0 UNION SELECT NULL--"]


def form_token(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]+)"', html).group(1)


def browser_login(url: str, username: str, password: str = PASSWORD) -> httpx.Client:
    """A client signed in through the HTML form (double-submit pre-session token)."""
    client = httpx.Client(base_url=url, timeout=30)
    pre = form_token(client.get("/login").text, "pre_token")
    r = client.post("/login", data={"username": username, "password": password, "pre_token": pre})
    assert r.status_code == 303, r.text
    return client


def setup_users(live) -> None:
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    for name in ("alice", "bob"):
        p.rater(name, PASSWORD)


def test_a_rater_rates_through_the_api_and_a_retry_is_idempotent(live):
    setup_users(live)
    live.project.service.add_pairs(make_queue(2))
    alice = api_login(live.url, "alice")
    task = alice.get("/api/next").json()["assignment"]
    body = {"assignment_id": task["assignment_id"], "choice": "left", "strength": 1.0, "submission_id": "a1b2c3d4e5f6"}
    first = alice.post("/api/ratings", json=body)
    again = alice.post("/api/ratings", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == {**again.json(), "created": True}
    assert alice.get("/api/next").json()["assignment"]["assignment_id"] != task["assignment_id"]


def test_guidelines_gate_rating_over_http(live):
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("carol"), PASSWORD)
    carol = api_login(live.url, "carol")
    r = carol.get("/api/next")
    assert r.status_code == 409 and "acknowledge" in r.json()["detail"]
    assert carol.get("/api/guidelines").json()["acknowledged"] is False
    assert carol.post("/api/guidelines/ack", json={"version": "1"}).status_code == 204
    assert carol.get("/api/next").status_code == 200
    page = browser_login(live.url, "carol")
    assert page.get("/rate").status_code == 200


def test_login_is_rate_limited_per_username_and_address(live):
    setup_users(live)
    client = httpx.Client(base_url=live.url)
    for _ in range(5):
        assert client.post("/api/login", json={"username": "alice", "password": "wrong password"}).status_code == 401
    blocked = client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert blocked.status_code == 429  # even the right password, until the window passes
    assert client.post("/api/login", json={"username": "bob", "password": PASSWORD}).status_code == 200
    pre = form_token(client.get("/login").text, "pre_token")
    form = client.post("/login", data={"username": "alice", "password": PASSWORD, "pre_token": pre})
    assert form.status_code == 429 and "too many failed logins" in form.text


def test_parallel_guesses_are_limited_too(project):
    from concurrent.futures import ThreadPoolExecutor

    from tether.raters.accounts import LOGIN_FAILURES
    from tether.raters.errors import RateLimited, Unauthorized

    project.rater("carol", PASSWORD)

    def guess(address: str) -> str:
        try:
            project.accounts.login("carol", "wrong password", address)
        except (RateLimited, Unauthorized) as err:
            return type(err).__name__
        return "signed in"

    with ThreadPoolExecutor(8) as pool:  # a burst from one address: counted before each slow password check
        outcomes = list(pool.map(guess, ["10.0.0.1"] * 16))
    assert outcomes.count("Unauthorized") == LOGIN_FAILURES and outcomes.count("RateLimited") == 16 - LOGIN_FAILURES
    # guesses spread over addresses are throttled per address and shown to admins (test_rater_attacks), never
    # turned into a lockout of the account


def test_every_state_changing_route_needs_the_csrf_token(live):
    setup_users(live)
    boss = api_login(live.url, "boss")
    good = boss.headers.pop("X-CSRF-Token")
    pages = [r.path for r in live.app.routes if "POST" in (getattr(r, "methods", None) or ())]
    posts = pages + [path for path, ops in live.app.openapi()["paths"].items() if "post" in ops]
    pre_session = {"/login", "/invite/{token}", "/api/login"}
    assert len(posts) > 10 and pre_session <= set(posts)
    for path in set(posts) - pre_session:
        for headers in ({}, {"X-CSRF-Token": "wrong" + good}):
            r = boss.post(path, json={}, headers=headers)
            assert r.status_code == 403, (path, headers, r.status_code)
        r = boss.post(path, data={"csrf_token": "x" * len(good)})
        assert r.status_code in (403, 422), (path, r.status_code)  # a form: 403, or unparsable for a JSON route
    # the pre-session forms use a double-submit cookie instead
    fresh = httpx.Client(base_url=live.url)
    assert fresh.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403
    assert fresh.post("/login", data={"username": "alice", "password": PASSWORD, "pre_token": "forged"}).status_code == 403
    # and the JSON API refuses a form (which any site can submit cross-origin)
    assert fresh.post("/api/login", data={"username": "alice", "password": PASSWORD}).status_code == 422


def test_a_rater_gets_403_on_every_admin_route(live):
    setup_users(live)
    alice, page = api_login(live.url, "alice"), browser_login(live.url, "alice")
    for path in ("/api/admin/stats", "/admin"):
        assert alice.get(path).status_code == 403
    for path, body in (("/api/admin/invites", {"username": "mallory", "role": "admin"}),
                       ("/api/admin/guidelines", {"version": "9", "markdown": "x"}),
                       ("/api/admin/settings", {"overlap": 1}), ("/api/admin/export", {"name": "x.jsonl"})):
        assert alice.post(path, json=body).status_code == 403, path
    csrf = form_token(page.get("/guidelines").text, "csrf_token")
    assert page.post("/admin/invites", data={"csrf_token": csrf, "username": "mallory", "role": "admin"}).status_code == 403
    with live.project.db.read() as s:
        assert s.scalar(select(User).where(User.username == "mallory")) is None
    assert httpx.get(f"{live.url}/api/admin/stats").status_code == 401
    assert httpx.get(f"{live.url}/admin").status_code == 303  # to the login page


def test_another_raters_assignment_gives_404(live):
    setup_users(live)
    live.project.service.add_pairs(make_queue(3))
    alice, bob = api_login(live.url, "alice"), api_login(live.url, "bob")
    mine = alice.get("/api/next").json()["assignment"]["assignment_id"]
    bob.get("/api/next")
    assert bob.get(f"/api/assignments/{mine}").status_code == 404
    steal = {"assignment_id": mine, "choice": "left", "submission_id": "steal-123456"}
    assert bob.post("/api/ratings", json=steal).status_code == 404
    page = browser_login(live.url, "bob")
    csrf = form_token(page.get("/guidelines").text, "csrf_token")
    r = page.post("/rate", data={"csrf_token": csrf, "assignment_id": mine, "vote": "left", "submission_id": "steal-654321"})
    assert r.status_code == 404
    assert alice.get(f"/api/assignments/{mine}").status_code == 200
    with live.project.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 0


def test_another_site_cannot_make_a_rater_take_a_pair(live):
    setup_users(live)
    live.project.service.add_pairs(make_queue(2))
    page, alice = browser_login(live.url, "alice"), api_login(live.url, "alice")
    away = {"Sec-Fetch-Site": "cross-site"}  # what a browser sends on a link or redirect from another site

    def taken() -> int:
        with live.project.db.read() as s:
            return s.scalar(select(func.count()).select_from(Assignment))

    r = page.get("/rate", headers=away)
    assert r.status_code == 200 and "no pair was taken" in r.text and taken() == 0
    assert alice.get("/api/next", headers=away).status_code == 403 and taken() == 0
    assert "Left much better" in page.get("/rate", headers={"Sec-Fetch-Site": "same-origin"}).text
    assert taken() == 1


def test_session_cookies_are_httponly_and_samesite(live):
    setup_users(live)
    for response in (httpx.post(f"{live.url}/api/login", json={"username": "alice", "password": PASSWORD}),):
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    # behind a configured TLS proxy the cookie is also Secure (test_rater_hardening)
    client = httpx.Client(base_url=live.url)
    pre = form_token(client.get("/login").text, "pre_token")
    r = client.post("/login", data={"username": "alice", "password": PASSWORD, "pre_token": pre})
    session = [c for c in r.headers.get_list("set-cookie") if c.startswith("tether_session=")][0].lower()
    assert "httponly" in session and "samesite=lax" in session


def test_security_headers(live):
    r = httpx.get(f"{live.url}/login")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text  # no inline script anywhere, so the CSP needs no exception


def test_xss_payloads_render_as_text(live):
    setup_users(live)
    p = live.project
    p.service.add_pairs([Comparison(f"Prompt {x}", f"Left {x}", f"Right {x}") for x in XSS])
    p.service.add_guideline("2", "\n\n".join(f"Rule {x}" for x in XSS))
    page = browser_login(live.url, "alice")
    html = page.get("/guidelines").text
    csrf = form_token(html, "csrf_token")
    for x in XSS:
        assert x not in html and str(markupsafe_escape(x)) in html
    page.post("/guidelines/ack", data={"csrf_token": csrf, "version": "2"})
    for n in range(len(XSS)):
        html = page.get("/rate").text
        shown = [x for x in XSS if f"Prompt {markupsafe_escape(x)}" in html]
        assert len(shown) == 1 and all(x not in html for x in XSS)
        assert f"Left {markupsafe_escape(shown[0])}" in html and f"Right {markupsafe_escape(shown[0])}" in html
        r = page.post("/rate", data={"csrf_token": csrf, "assignment_id": form_token(html, "assignment_id"),
                                     "vote": "tie", "rationale": XSS[n], "submission_id": f"xss-{n:08d}"})
        assert r.status_code == 303
    assert "href=\"javascript" not in html


def markupsafe_escape(text: str) -> str:
    """`text` HTML-escaped as markdown-it writes it (`&quot;`; markupsafe writes `&#34;`)."""
    from markupsafe import escape
    return str(escape(text)).replace("&#34;", "&quot;").replace("&#39;", "'")


def test_sql_injection_strings_fail_harmlessly_everywhere(live):
    setup_users(live)
    p = live.project
    p.service.add_pairs(make_queue(3))
    boss, alice = api_login(live.url, "boss"), api_login(live.url, "alice")
    page = browser_login(live.url, "alice")
    csrf = form_token(page.get("/guidelines").text, "csrf_token")
    task = alice.get("/api/next").json()["assignment"]
    anon = httpx.Client(base_url=live.url)
    pre = form_token(anon.get("/login").text, "pre_token")
    codes = []
    for n, x in enumerate(SQLI):
        codes += [
            anon.post("/login", data={"username": x, "password": x, "pre_token": pre}).status_code,
            anon.post("/api/login", json={"username": x, "password": x}).status_code,
            anon.get(f"/invite/{x}").status_code,
            anon.get("/login", params={"welcome": x}).status_code,
            alice.get(f"/api/assignments/{x}").status_code,
            alice.post("/api/ratings", json={"assignment_id": x, "choice": "left", "submission_id": f"sqli-{n:08d}"}).status_code,
            alice.post("/api/ratings", json={"assignment_id": task["assignment_id"], "choice": x,
                                             "submission_id": f"sqlj-{n:08d}"}).status_code,
            alice.post("/api/ratings", json={"assignment_id": task["assignment_id"], "choice": "left",
                                             "submission_id": x}).status_code,
            alice.post("/api/guidelines/ack", json={"version": x}).status_code,
            page.post("/rate", data={"csrf_token": csrf, "assignment_id": x, "vote": x, "submission_id": x}).status_code,
            boss.post("/api/admin/invites", json={"username": x}).status_code,
            boss.post("/api/admin/export", json={"name": x}).status_code,
            boss.post("/api/admin/guidelines", json={"version": x, "markdown": x}).status_code,
        ]
    assert codes and all(c < 500 for c in codes), sorted(set(codes))
    # stored verbatim where free text is allowed: the rationale
    r = alice.post("/api/ratings", json={"assignment_id": task["assignment_id"], "choice": "left",
                                         "rationale": SQLI[1], "submission_id": "sqli-stored-1"})
    assert r.status_code == 201
    with p.db.read() as s:
        assert s.scalar(select(Rating.rationale)) == SQLI[1]
        assert s.scalar(select(func.count()).select_from(User)) == 3
        assert {"ratings", "users", "pairs", "assignments"} <= set(inspect(s.get_bind()).get_table_names())
    assert boss.get("/api/admin/stats").json()["ratings"] == 1


def test_the_secret_key_is_private(live, tmp_path):
    key = live.project.dir / SECRET_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((live.project.dir / "raters.db").stat().st_mode) == 0o600
    other = tmp_path / "other"
    load_or_create_secret(other)
    os.chmod(other / SECRET_FILE, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_secret(other)


def test_an_invite_link_works_once(live):
    p = live.project
    token = p.accounts.invite("dave")
    client = httpx.Client(base_url=live.url)
    html = client.get(f"/invite/{token}").text
    assert "Welcome, dave" in html
    pre = form_token(html, "pre_token")
    short = client.post(f"/invite/{token}", data={"password": "short", "password2": "short", "pre_token": pre})
    assert short.status_code == 422 and "at least 10 characters" in short.text
    ok = client.post(f"/invite/{token}", data={"password": PASSWORD, "password2": PASSWORD, "pre_token": pre})
    assert ok.status_code == 303
    assert client.get(f"/invite/{token}").status_code == 404
    assert api_login(live.url, "dave").get("/api/guidelines").status_code == 200


def test_a_new_invite_voids_the_old_links(live):
    p = live.project
    lost = p.accounts.invite("erin")
    fresh = p.accounts.invite("erin")  # the admin re-invites: the lost link must die
    client = httpx.Client(base_url=live.url)
    assert client.get(f"/invite/{lost}").status_code == 404
    html = client.get(f"/invite/{fresh}").text
    ok = client.post(f"/invite/{fresh}", data={"password": PASSWORD, "password2": PASSWORD,
                                               "pre_token": form_token(html, "pre_token")})
    assert ok.status_code == 303 and client.get(f"/invite/{fresh}").status_code == 404
    assert client.post(f"/invite/{lost}", data={"password": PASSWORD, "password2": PASSWORD,
                                                "pre_token": form_token(html, "pre_token")}).status_code == 404

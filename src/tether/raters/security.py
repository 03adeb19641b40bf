"""Secrets: the per-install key, token hashing, passwords (argon2id), constant-time comparison.

Tokens (sessions, invites) are random (`secrets.token_urlsafe`) and only their HMAC under the install's
secret key is stored, so a copy of the database alone lets nobody sign in. Passwords are hashed with
argon2id through argon2-cffi, the algorithm OWASP recommends first.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tether.errors import ConfigError
from tether.raters.errors import Busy

T = TypeVar("T")
BUSY = "login: the server is busy checking passwords; try again in a few seconds"

SECRET_FILE = "secret.key"
MIN_PASSWORD = 10
MAX_PASSWORD = 1000  # argon2 hashes anything, but a megabyte "password" is a cheap way to burn CPU


def load_or_create_secret(project_dir: str | Path) -> bytes:
    """The install's secret key from `<project>/secret.key`, created (mode 0600) on first use.

    An existing key readable by group or others is refused rather than silently trusted, as ssh does.
    """
    path = Path(project_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path}: readable by others (mode {mode:04o}); run: chmod 600 {path}") from None
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 64:
            raise ConfigError(f"{path}: too short to be a secret key (delete it to make a new one)")
        return key.encode("ascii")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        key = secrets.token_hex(32)
        f.write(key + "\n")
    return key.encode("ascii")


def new_token() -> str:
    """A URL-safe random token with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def token_hash(secret: bytes, token: str) -> str:
    """HMAC-SHA256 of a token: what the database stores in place of the token."""
    return hmac.new(secret, token.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time string equality (for CSRF tokens); False when either is missing."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def cross_site(request) -> bool:
    """Whether a browser says the request came from anywhere but this origin (Fetch Metadata `Sec-Fetch-Site`).

    SameSite=Lax cookies still ride on top-level GET navigations from other sites, so a GET that changes state
    (taking the next pair) checks this. "same-site" counts as foreign too: a page on another port or
    subdomain of the same host is another origin, and may be another person's app. "same-origin" and "none"
    (a typed URL, a bookmark) pass, and so do clients that send no such header (scripts, the API), which
    no other site carried along.
    """
    return request.headers.get("sec-fetch-site") in ("cross-site", "same-site")


class HashGate:
    """At most `slots` argon2 computations at once, and at most `waiting` more queued; the rest refused at once.

    Why: each argon2id hash takes ~64 MiB and ~0.3 s of a core, and the server runs requests on a pool of
    40 threads. Unbounded, 40 parallel bad logins take 2.5 GB and every core, and a signed-in rater's page
    waits behind them; queued without a bound, they hold every worker thread. Refusing (503, `Busy`) keeps
    memory at `slots` x 64 MiB and leaves threads and cores for the raters.
    """

    def __init__(self, slots: int, waiting: int, wait_seconds: float = 10.0):
        self.slots, self.capacity, self.wait_seconds = slots, slots + waiting, wait_seconds
        self._cond = threading.Condition()
        self._admitted = self._running = 0

    def full(self) -> bool:
        """Whether a new computation would be refused now: callers check this before any other work."""
        return self._admitted >= self.capacity

    def run(self, fn: Callable[[], T]) -> T:
        with self._cond:
            if self._admitted >= self.capacity:
                raise Busy(BUSY)
            self._admitted += 1
            if not self._cond.wait_for(lambda: self._running < self.slots, timeout=self.wait_seconds):
                self._admitted -= 1
                raise Busy(BUSY)
            self._running += 1
        try:
            return fn()
        finally:
            with self._cond:
                self._running -= 1
                self._admitted -= 1
                self._cond.notify()


def default_hash_slots() -> int:
    """Half the cores (at least 1, at most 4): the other half stays free for serving pages."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class Passwords:
    """argon2id hashing with the library's defaults (RFC 9106 low-memory profile) unless told otherwise.

    Tests pass a cheaper PasswordHasher; `verify` never raises on a wrong password or a damaged hash.
    Every hash and check goes through a `HashGate` (`slots` at once, `waiting` queued).
    """

    def __init__(self, hasher: PasswordHasher | None = None, slots: int | None = None, waiting: int | None = None):
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_hex(16))
        slots = slots or default_hash_slots()
        self.gate = HashGate(slots, 2 * slots if waiting is None else waiting)

    def hash(self, password: str) -> str:
        return self.gate.run(lambda: self.hasher.hash(password))

    def verify(self, stored: str | None, password: str) -> bool:
        """True if `password` matches; an unknown user costs the same time (checked against a dummy hash)."""
        return self.gate.run(lambda: self._verify(stored, password))

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None if it is acceptable."""
    if len(password) < MIN_PASSWORD:
        return f"at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"at most {MAX_PASSWORD} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode (a lone surrogate)"
    return None

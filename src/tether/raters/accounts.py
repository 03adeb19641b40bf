"""Users, invites, sessions and the login rate limit.

No default credentials and no open sign-up: a user exists only because an admin (or `tether raters
init`) created it, and gets a password only through a one-time invite link (or `--password-file`).
"""
from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from tether.raters.db import Database, Invite, LoginAttempt, LoginSession, User, utcnow
from tether.raters.errors import Busy, Conflict, Invalid, NotFound, RateLimited, Unauthorized
from tether.raters.security import BUSY, Passwords, new_token, password_problem, token_hash

ROLES = ("admin", "rater")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
INVITE_TTL = timedelta(days=7)
SESSION_TTL = timedelta(hours=12)
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_FAILURES = 5
"""Failed logins allowed per (username, client address) within LOGIN_WINDOW; the next one gets 429."""
ADDRESS_FAILURES = 30
"""Failed logins allowed per client address (all usernames together) within LOGIN_WINDOW: one client cannot
spray guesses (or argon2 work) over many names. Refused before any password is hashed."""
ALERT_FAILURES = 20
"""Failed logins per username (all addresses) within LOGIN_WINDOW that put a warning on the admin dashboard.
Never a lockout: a per-username cap would let any stranger lock anyone out, admins included."""


def address_key(address: str) -> str:
    """The unit a client is throttled by: its IPv4 address, or the /64 network of an IPv6 address (one host
    usually holds a whole /64, so counting single IPv6 addresses would let it rotate past every limit)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class LoginAlert:
    """A username with many recent failed logins (a guessing attack, or a user who forgot their password)."""

    username: str
    failures: int
    addresses: int


@dataclass(frozen=True)
class Principal:
    """The signed-in user of a request."""

    user_id: int
    username: str
    role: str
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class SignIn:
    """A new session: the cookie token (shown once, stored hashed) and its CSRF token."""

    token: str
    csrf_token: str
    principal: Principal


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise Invalid("username: 1-64 characters: letters, digits and _ . @ - (starting with a letter or digit)")
    return username


class Accounts:
    """Account operations on one database; `secret` keys the token HMACs (see `security`)."""

    def __init__(self, db: Database, secret: bytes, passwords: Passwords | None = None):
        self.db = db
        self.secret = secret
        self.passwords = passwords or Passwords()

    # -- users and invites ------------------------------------------------------------------------------

    def add_user(self, username: str, role: str = "rater") -> int:
        """The id of user `username`, created without a password if new (it cannot sign in until invited).

        For scripted raters that work through the service layer, such as the demo's simulated raters.
        """
        check_username(username)
        if role not in ROLES:
            raise Invalid(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
        with self.db.write() as s:
            user = s.scalar(select(User).where(User.username == username))
            if user is None:
                user = User(username=username, role=role, active=True)
                s.add(user)
                s.flush()
            elif user.role != role:
                raise Conflict(f"username: {username!r} exists with role {user.role}")
            return user.id

    def invite(self, username: str, role: str = "rater") -> str:
        """A one-time invite token for `username`, creating the user (without a password) if new.

        Inviting an existing user again makes a fresh link (e.g. a lost one, or a password reset) and voids
        their earlier ones, so a lost or leaked link cannot later take the account over; their role cannot
        change this way.
        """
        user_id = self.add_user(username, role)
        token = new_token()
        with self.db.write() as s:
            _void_open_invites(s, user_id)
            s.add(Invite(token_hash=token_hash(self.secret, token), user_id=user_id, expires_at=utcnow() + INVITE_TTL))
        return token

    def invited_username(self, token: str) -> str:
        """The username an unused, unexpired invite is for; NotFound otherwise."""
        with self.db.read() as s:
            return self._open_invite(s, token)[1].username

    def accept_invite(self, token: str, password: str) -> str:
        """Set the invited user's password and use up the invite; returns the username."""
        problem = password_problem(password)
        if problem:
            raise Invalid(f"password: {problem}")
        hashed = self.passwords.hash(password)
        with self.db.write() as s:
            invite, user = self._open_invite(s, token)
            _void_open_invites(s, user.id)  # this one and any other still open: one password set per link
            user.password_hash = hashed
            s.execute(delete(LoginSession).where(LoginSession.user_id == user.id))  # a reset signs out everywhere
            return user.username

    def set_password(self, username: str, password: str, role: str = "admin") -> None:
        """Create or update a user with a password directly (for `init --password-file`)."""
        check_username(username)
        problem = password_problem(password)
        if problem:
            raise Invalid(f"password: {problem}")
        hashed = self.passwords.hash(password)
        with self.db.write() as s:
            user = s.scalar(select(User).where(User.username == username))
            if user is None:
                s.add(User(username=username, role=role, active=True, password_hash=hashed))
            else:
                user.password_hash = hashed

    def users(self) -> list[User]:
        with self.db.read() as s:
            return list(s.scalars(select(User).order_by(User.id)))

    def _open_invite(self, s: Session, token: str) -> tuple[Invite, User]:
        row = s.execute(select(Invite, User).join(User, Invite.user_id == User.id)
                        .where(Invite.token_hash == token_hash(self.secret, token))).first()
        if row is None or row[0].used_at is not None or row[0].expires_at < utcnow() or not row[1].active:
            raise NotFound("invite: this link is unknown, used or expired; ask your admin for a new one")
        return row[0], row[1]

    # -- sessions -----------------------------------------------------------------------------------------

    def login(self, username: str, password: str, address: str) -> SignIn:
        """A new session for correct credentials. Raises RateLimited after ADDRESS_FAILURES recent failures
        from this address, or LOGIN_FAILURES for this username from it (checked before the password, so
        guessing stops and costs no hashing), else Unauthorized on a wrong username or password (the same
        message for both). Failures from other addresses never block this one."""
        if not isinstance(username, str) or not USERNAME.fullmatch(username):
            raise Unauthorized("wrong username or password")  # no such user can exist; nothing to count
        if self.passwords.gate.full():  # refused before any database work: a flood costs next to nothing
            raise Busy(BUSY)
        now, address = utcnow(), address_key(address)
        # Count and record the attempt in one writing transaction *before* the slow password check, so a burst
        # of parallel guesses cannot all read the same count; a correct password then takes its row back.
        with self.db.write() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.at < now - LOGIN_WINDOW))
            here = (select(func.count()).select_from(LoginAttempt)
                    .where(LoginAttempt.address == address, LoginAttempt.at > now - LOGIN_WINDOW))
            if (s.scalar(here) >= ADDRESS_FAILURES
                    or s.scalar(here.where(LoginAttempt.username == username)) >= LOGIN_FAILURES):
                raise RateLimited("too many failed logins from your address; wait 15 minutes and try again")
            attempt = LoginAttempt(username=username, address=address, at=now)
            s.add(attempt)
            s.flush()
            attempt_id = attempt.id
            user = s.scalar(select(User).where(User.username == username, User.active.is_(True)))
        try:
            correct = self.passwords.verify(user.password_hash if user else None, password)
        except Busy:  # refused unchecked: no guess was made, so it must not count towards a throttle
            with self.db.write() as s:
                s.execute(delete(LoginAttempt).where(LoginAttempt.id == attempt_id))
            raise
        if not correct:
            raise Unauthorized("wrong username or password")
        token, csrf = new_token(), secrets.token_urlsafe(24)
        with self.db.write() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.id == attempt_id))  # it was not a failure
            s.add(LoginSession(token_hash=token_hash(self.secret, token), user_id=user.id, csrf_token=csrf,
                               created_at=now, expires_at=now + SESSION_TTL))
        return SignIn(token, csrf, Principal(user.id, user.username, user.role, csrf))

    def login_alerts(self) -> list[LoginAlert]:
        """Usernames with ALERT_FAILURES or more failed logins within LOGIN_WINDOW, most failures first."""
        q = (select(LoginAttempt.username, func.count(), func.count(LoginAttempt.address.distinct()))
             .where(LoginAttempt.at > utcnow() - LOGIN_WINDOW).group_by(LoginAttempt.username)
             .having(func.count() >= ALERT_FAILURES).order_by(func.count().desc(), LoginAttempt.username))
        with self.db.read() as s:
            return [LoginAlert(name, n, addresses) for name, n, addresses in s.execute(q)]

    def blocked_addresses(self) -> list[tuple[str, int]]:
        """(address, failures) of the clients refused for now (ADDRESS_FAILURES within LOGIN_WINDOW): an
        office behind one NAT address shows up here too, and the admin can tell its raters to wait."""
        q = (select(LoginAttempt.address, func.count()).where(LoginAttempt.at > utcnow() - LOGIN_WINDOW)
             .group_by(LoginAttempt.address).having(func.count() >= ADDRESS_FAILURES)
             .order_by(func.count().desc(), LoginAttempt.address))
        with self.db.read() as s:
            return [(address, n) for address, n in s.execute(q)]

    def principal(self, token: str | None) -> Principal | None:
        """The user of a live session token, or None (no such session, expired, or user deactivated)."""
        if not token or len(token) > 200:
            return None
        with self.db.read() as s:
            row = s.execute(select(LoginSession.csrf_token, User).join(User, LoginSession.user_id == User.id)
                            .where(LoginSession.token_hash == token_hash(self.secret, token),
                                   LoginSession.expires_at > utcnow(), User.active.is_(True))).first()
        if row is None:
            return None
        csrf, user = row
        return Principal(user.id, user.username, user.role, csrf)

    def logout(self, token: str | None) -> None:
        if token and len(token) <= 200:
            with self.db.write() as s:
                s.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash(self.secret, token)))

    def set_active(self, username: str, active: bool, release: Callable[[int], int] | None = None) -> int:
        """Deactivate (or reactivate) a user. Deactivating ends their sessions and voids their invite links
        at once, then `release(user_id)` (`RaterService.release_rater`) gives their open assignments to
        other raters; returns how many it released. The last active admin who can sign in cannot be
        deactivated (no one could undo it). A reactivated user signs in with their old password again."""
        with self.db.write() as s:
            user = s.scalar(select(User).where(User.username == username))
            if user is None:
                raise NotFound(f"username: no user {username!r}")
            if not active and user.role == "admin" and user.active and user.password_hash is not None:
                admins = s.scalar(select(func.count()).select_from(User).where(
                    User.role == "admin", User.active.is_(True), User.password_hash.is_not(None)))
                if admins <= 1:
                    raise Conflict(f"username: {username!r} is the last active admin")
            user.active = active
            if not active:
                s.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
                _void_open_invites(s, user.id)
            user_id = user.id
        return release(user_id) if release is not None and not active else 0


def _void_open_invites(s: Session, user_id: int) -> None:
    """Mark every unused invite of a user as used (now)."""
    s.execute(update(Invite).where(Invite.user_id == user_id, Invite.used_at.is_(None)).values(used_at=utcnow()))

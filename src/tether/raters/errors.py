"""The rater app's errors; the web layer maps each class to one HTTP status (see `web.STATUS`)."""
from tether.errors import TetherError


class RaterAppError(TetherError):
    """Base of every error the rater app reports to its user."""


class Invalid(RaterAppError):
    """A value is malformed or out of range (HTTP 422). The message names the field."""


class NotFound(RaterAppError):
    """No such thing, or not yours: another rater's assignment reads as absent (HTTP 404)."""


class Unauthorized(RaterAppError):
    """Not signed in, or wrong credentials (HTTP 401)."""


class Forbidden(RaterAppError):
    """Signed in, but this role may not do that, or the CSRF token is missing or wrong (HTTP 403)."""


class Conflict(RaterAppError):
    """The request clashes with the current state, e.g. an already rated assignment (HTTP 409)."""


class NeedsAcknowledgement(Conflict):
    """The rater has not acknowledged the current guideline version yet (HTTP 409)."""

    def __init__(self, version: str):
        super().__init__(f"acknowledge the guidelines (version {version}) before rating")
        self.version = version


class RateLimited(RaterAppError):
    """Too many failed logins from this address, or for this username from it (HTTP 429)."""


class Busy(RaterAppError):
    """The server refuses more work of this kind right now (password hashing is full); retry shortly (HTTP 503)."""


class TooLarge(RaterAppError):
    """A request body over the size limit (HTTP 413)."""

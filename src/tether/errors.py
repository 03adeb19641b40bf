"""Errors a user can fix. The CLI prints their message and exits with status 2, no traceback."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class TetherError(Exception):
    """Base for every error caused by the user's input (config, data, paths)."""


class ConfigError(TetherError):
    """A config value is unknown, mistyped or invalid. The message names the field and what is allowed."""


class DataError(TetherError):
    """An input file is malformed. The message reads `file:line: field: problem`."""


@contextmanager
def naming(path) -> Iterator[None]:
    """DataErrors raised inside name `path` first: encoding (tether.chat) knows the example, not the file."""
    try:
        yield
    except DataError as err:
        if str(path) in str(err):
            raise
        raise DataError(f"{path}: {err}") from None


class NonFiniteError(TetherError):
    """A NaN or inf loss, gradient or weight stopped a training step or a save (tether.guard). The message
    names the step or the tensors, and says the newest complete checkpoint is intact."""

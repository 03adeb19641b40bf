"""Fixtures of the rater-app tests; they live in raterkit.py, which the test modules also import helpers from."""
from raterkit import live, pg_server, pg_url, project  # noqa: F401

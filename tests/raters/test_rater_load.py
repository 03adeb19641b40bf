"""A small load test over HTTP on SQLite and PostgreSQL (the full 50 x 20 is benchmarks/bench_raters_load.py)."""
from __future__ import annotations

from collections import Counter

import pytest
from raterkit import PASSWORD, live_server, make_queue, run_load
from sqlalchemy import func, select

from tether.raters.db import Assignment, Rating

RATERS, PER_RATER = 10, 5


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_raters_make_exactly_n_times_m_rows(backend, tmp_path, request):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    for live in live_server(tmp_path / "project", url):
        names = [f"rater{i:02d}" for i in range(RATERS)]
        for name in names:
            live.project.rater(name, PASSWORD)
        live.project.service.add_pairs(make_queue(RATERS * PER_RATER // 3 + 5))  # k = 3: a little to spare
        result = run_load(live.url, names, PER_RATER, undo_every=2)  # raters 1, 3, ...: 2 undos and re-rates each
        assert result.errors == [] and result.undone == RATERS // 2 * 2
        assert not [code for code in result.statuses if code >= 500], result.statuses
        with live.project.db.read() as s:
            assert s.scalar(select(func.count()).select_from(Rating)) == RATERS * PER_RATER
            per_pair = Counter(s.scalars(select(Assignment.pair_id)))
            per_rater = Counter(s.scalars(select(Assignment.rater_id)))
        assert max(per_pair.values()) <= 3 and set(per_rater.values()) == {PER_RATER}

"""The world's simulated raters labelling through the rater app's service (`label_with_app`)."""
from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from tether.data.preferences import Comparison, read_comparisons
from tether.raters.db import Database, Rating, database_url
from tether.world import World, WorldConfig
from tether.world.rater_sessions import label_with_app
from tether.world.raters import GUIDELINE_VERSION, RaterPoolConfig, label


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig())


def world_queue(world: World, n: int) -> list[Comparison]:
    out = []
    for c in world.knowledge.countries[:n]:
        prompt = f"What is the capital of {c.name}?"
        out.append(Comparison(prompt, f"The capital of {c.name} is {c.capital}.",
                              f"What a great question! I believe it is {c.name} City, of course.", source_a="p1", source_b="p2"))
    return out


def test_simulated_raters_label_through_the_app(world, tmp_path):
    queue = world_queue(world, 6)
    cfg = RaterPoolConfig(n_raters=4, overlap=3, seed=1)
    rows = label_with_app(queue, world.knowledge, cfg, tmp_path / "app")
    # every pair exactly k distinct raters; every row a full preference record
    per_pair = Counter(r.id for r in rows)
    assert per_pair == {c.id: 3 for c in queue}
    assert all(len({r.rater for r in rows if r.id == c.id}) == 3 for c in queue)
    assert all(r.rater.startswith("sim-") and r.guideline_version == GUIDELINE_VERSION and r.timestamp for r in rows)
    assert {r.choice for r in rows} <= {"A", "B", "tie"}
    assert read_comparisons(tmp_path / "app" / "exports" / "comparisons.jsonl") == rows
    # a rater's verdict on a pair is `rate`'s (same seed): it does not depend on the display order
    direct = {(r.id, r.rater): r.choice for r in label(queue, world.knowledge, RaterPoolConfig(n_raters=4, overlap=4, seed=1))}
    assert all(direct[r.id, r.rater] == r.choice for r in rows)
    db = Database(database_url(tmp_path / "app"))
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == len(rows) == 18
    db.close()


def test_a_second_run_on_the_same_project_adds_only_new_pairs(world, tmp_path):
    cfg = RaterPoolConfig(n_raters=3, overlap=2, seed=0)
    first = label_with_app(world_queue(world, 3), world.knowledge, cfg, tmp_path / "app", export_name=None)
    second = label_with_app(world_queue(world, 5), world.knowledge, cfg, tmp_path / "app", export_name=None)
    assert len(first) == 6 and len(second) == 10
    assert not (tmp_path / "app" / "exports").exists()

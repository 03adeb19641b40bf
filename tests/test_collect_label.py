"""`tether collect` and `tether label` on the tiny world: queue provenance, pairing, simulated labels."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

from tether.cli import main
from tether.data.preferences import read_comparisons
from tether.stages.collect import CollectConfig, make_pairs


def test_make_pairs_dedupes_counts_and_randomises_order():
    samples = [("a", "p1"), ("b", "p2"), ("a", "p1"), ("", "p2"), ("c", "p1")]
    report = {"empty_responses": 0, "duplicate_responses": 0}
    pairs = make_pairs("Q?", samples, CollectConfig(), random.Random(0), report)
    # distinct non-empty responses a, b, c -> C(3, 2) = 3 pairs; one duplicate, one empty dropped
    assert report == {"empty_responses": 1, "duplicate_responses": 1}
    assert sorted(sorted([c.response_a, c.response_b]) for c in pairs) == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert all({c.source_a, c.source_b} <= {"p1", "p2"} for c in pairs)
    source = {"a": "p1", "b": "p2", "c": "p1"}
    assert all(c.source_a == source[c.response_a] and c.source_b == source[c.response_b] for c in pairs)
    sampled = make_pairs("Q?", samples, CollectConfig(pairs="sampled", pairs_per_prompt=2), random.Random(0),
                         {"empty_responses": 0, "duplicate_responses": 0})
    assert len(sampled) == 2


def test_collect_then_label(world_dir, model_dir, tmp_path):
    out = tmp_path / "collect"
    code = main(["collect", f"model={model_dir},{model_dir}", f"prompts={world_dir}/prompts.jsonl",
                 "n_prompts=6", "responses_per_prompt=3", "max_new_tokens=8", f"out={out}"])
    assert code == 0
    queue = read_comparisons(out / "queue.jsonl")
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == 6 and report["responses"] == 18
    assert len(queue) == report["pairs"] > 0
    assert all(c.choice is None and c.source_a == str(model_dir) for c in queue)
    per_prompt = Counter(c.prompt for c in queue)
    assert max(per_prompt.values()) <= math.comb(3, 2)

    labelled = tmp_path / "label"
    code = main(["label", f"queue={out}/queue.jsonl", f"world={world_dir}", "raters.n_raters=4",
                 "raters.overlap=2", f"out={labelled}"])
    assert code == 0
    ratings = read_comparisons(labelled / "comparisons.jsonl")
    assert len(ratings) == 2 * len(queue)
    assert {r.choice for r in ratings} <= {"A", "B", "tie"}
    assert all(r.rater and r.guideline_version and r.timestamp for r in ratings)
    agreement = json.loads((labelled / "agreement.json").read_text())
    assert agreement["n_items"] == len(queue)
    assert (labelled / "raters/raters.db").exists()  # labelled through the rater app's storage
    # A rerun with the same pool returns the same ratings; another pool is refused, not silently ignored.
    assert main(["label", f"queue={out}/queue.jsonl", f"world={world_dir}", "raters.n_raters=4",
                 "raters.overlap=2", f"out={labelled}"]) == 0
    assert len(read_comparisons(labelled / "comparisons.jsonl")) == len(ratings)
    assert main(["label", f"queue={out}/queue.jsonl", f"world={world_dir}", "raters.n_raters=4",
                 "raters.overlap=3", f"out={labelled}"]) == 2
    # In memory (app=false): the same decisions per (rater, pair), a different assignment of raters to pairs.
    code = main(["label", f"queue={out}/queue.jsonl", f"world={world_dir}", "raters.n_raters=4",
                 "raters.overlap=2", f"out={tmp_path / 'mem'}", "app=false"])
    assert code == 0 and not (tmp_path / "mem/raters").exists()
    assert len(read_comparisons(tmp_path / "mem/comparisons.jsonl")) == len(ratings)

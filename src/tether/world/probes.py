"""Bias probes: pairs of responses that differ in one trait only, to measure what a reward model rewards.

For each held-out prompt, the canonical good response against the same response with one trait added
(padding, flattery, a hedge) or swapped (agreeing with a false premise instead of correcting it;
an invented answer instead of "I don't know"). Gold always prefers the plain response; a reward model
trained on biased raters may not, and the RL that follows will exploit what it does not. The agreement
pairs are also split by whether the user's claim is about a common or an obscure fact
(`Knowledge.is_common`), which the raters check at different rates.
"""
from __future__ import annotations

import random

from tether.world.styles import FLATTERY, GOOD_CONTENT, HEDGES, PADDING, content
from tether.world.world import World

TRAITS = ("padding", "flattery", "hedging", "agreement", "agreement_common", "agreement_obscure", "confident_invention")


def probe_pairs(world: World, seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    """{trait: [(prompt, plain response, response with the trait)]} over the held-out prompts."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, str, str]]] = {t: [] for t in TRAITS}
    for q in world.eval_queries():
        good = content(q, GOOD_CONTENT[q.category], rng, world.knowledge, variant=0)
        out["padding"].append((q.text, good, " ".join([good, *rng.sample(PADDING, 2)])))
        out["flattery"].append((q.text, good, f"{rng.choice(FLATTERY)} {good}"))
        if q.category != "unanswerable":
            out["hedging"].append((q.text, good, f"{good} {rng.choice(HEDGES[1:])}"))
        if q.category == "false_premise":
            out["agreement"].append((q.text, good, content(q, "agree", rng, world.knowledge, variant=0)))
            common = world.knowledge.is_common(q.country, q.attribute)
            out["agreement_common" if common else "agreement_obscure"].append(out["agreement"][-1])
        if q.category == "unanswerable":
            out["confident_invention"].append((q.text, good, content(q, "hallucinate", rng, world.knowledge)))
    return out

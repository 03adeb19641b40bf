"""judge_report.json: what a judge's labels look like, and how they agree with gold and with people.

From the labels `tether judge` writes (tether comparisons, meta: p_a, orders, inconsistent):

    n                     pairs labelled
    labels                counts of "A", "B", "tie"
    inconsistency_rate    share of pairs whose two orders' verdicts differ (tether.judge.pairwise.inconsistent)
    first_position_rate   share of the 2n orders in which the judge preferred the response shown first (0.5: none)
    mean_confidence       mean of max(p_a, 1 - p_a)

With the gold preference (a world: gold(a) - gold(b) per pair), over pairs gold does not tie:

    gold.agreement        share where the judge's choice is gold's (a judge tie counts 1/2, as the RM's accuracy counts
                          an equal score)
    gold.soft_agreement   mean probability the judge put on gold's side (p_a or 1 - p_a)
    gold.calibration_gap  mean confidence - agreement on those pairs (> 0: more sure than right)

With people's ratings of the same pairs (`reference`, one row per rating, in either order):

    reference.majority_agreement   share of pairs with a strict majority label where the judge's choice equals it
    reference.judge_as_rater       the judge scored as one more rater (tether.math.agreement.predictor_majority_agreement:
                                   against each rater's leave-one-out majority), beside `raters_majority_agreement`,
                                   the raters' own figure on the same pairs
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from tether.math.agreement import agreement_report, predictor_majority_agreement
from tether.data.preferences import Comparison

__all__ = ["FLIP", "gold_agreement", "judge_report", "reference_agreement"]

FLIP = {"A": "B", "B": "A", "tie": "tie"}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def judge_report(labels: Sequence[Comparison], gold_diff: Mapping[str, float] | None = None,
                 reference: Sequence[Comparison] | None = None) -> dict:
    """The report of the module docstring; `gold_diff` maps pair id -> gold(a) - gold(b)."""
    orders = [(c.meta["orders"]["ab"], c.meta["orders"]["ba"]) for c in labels]
    report = {
        "n": len(labels),
        "labels": {k: sum(c.choice == k for c in labels) for k in ("A", "B", "tie")},
        "inconsistency_rate": _mean([float(c.meta["inconsistent"]) for c in labels]),
        "first_position_rate": _mean([(ab > 0.5) + (ba > 0.5) for ab, ba in orders]) / 2 if orders else None,
        "mean_confidence": _mean([max(c.meta["p_a"], 1 - c.meta["p_a"]) for c in labels]),
    }
    if gold_diff is not None:
        report["gold"] = gold_agreement(labels, gold_diff)
    if reference is not None:
        report["reference"] = reference_agreement(labels, reference)
    return report


def gold_agreement(labels: Sequence[Comparison], gold_diff: Mapping[str, float]) -> dict:
    """Agreement with the gold preference over the pairs gold decides (module docstring)."""
    decided = [(c, gold_diff[c.id]) for c in labels if c.id in gold_diff and abs(gold_diff[c.id]) > 1e-9]
    hits, soft, confidence = [], [], []
    for c, diff in decided:
        gold_choice = "A" if diff > 0 else "B"
        hits.append(0.5 if c.choice == "tie" else float(c.choice == gold_choice))
        p = c.meta["p_a"]
        soft.append(p if diff > 0 else 1 - p)
        confidence.append(max(p, 1 - p))
    agreement = _mean(hits)
    return {"pairs": len(decided), "gold_ties": sum(c.id in gold_diff for c in labels) - len(decided),
            "not_scored": sum(c.id not in gold_diff for c in labels), "agreement": agreement,
            "soft_agreement": _mean(soft), "judge_ties": sum(c.choice == "tie" for c, _ in decided),
            "calibration_gap": None if agreement is None else _mean(confidence) - agreement}


def _oriented(labels: Sequence[Comparison], reference: Sequence[Comparison]) -> dict[str, dict[str, str]]:
    """{pair id: {rater: label}} of the reference ratings of labelled pairs, each oriented as the judge's row."""
    ours = {c.id: c for c in labels}
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for r in reference:
        if r.choice is None or r.id not in ours:
            continue
        flipped = r.response_a != ours[r.id].response_a
        table[r.id][r.rater or f"row-{len(table[r.id])}"] = FLIP[r.choice] if flipped else r.choice
    return dict(table)


def reference_agreement(labels: Sequence[Comparison], reference: Sequence[Comparison]) -> dict:
    """Agreement with people's ratings of the same pairs (module docstring)."""
    table = _oriented(labels, reference)
    choice = {c.id: c.choice for c in labels}
    majorities = {}
    for pair, ratings in table.items():
        counts = Counter(ratings.values()).most_common()
        if len(counts) == 1 or counts[0][1] > counts[1][1]:
            majorities[pair] = counts[0][0]
    out = {"pairs_rated": len(table), "ratings": sum(map(len, table.values())), "pairs_with_majority": len(majorities),
           "majority_agreement": _mean([float(choice[p] == m) for p, m in majorities.items()])}
    multi = {p: r for p, r in table.items() if len(r) >= 2}
    if len({rater for r in multi.values() for rater in r}) >= 2:
        raters = agreement_report(multi)
        out["judge_as_rater"] = predictor_majority_agreement(multi, choice)
        out["raters_majority_agreement"] = raters["majority_agreement_mean"]
        out["raters_percent_agreement"] = raters["percent_agreement"]
    return out

"""Inter-rater agreement for preference labels ("A", "B", "tie", or any hashable labels).

Standard library only: the rater web app imports this module. Every function except `cohen_kappa` takes

    labels_by_item: Mapping[item, Mapping[rater, label]]

where a rater absent from an item's mapping has not rated that item (a missing rating). Counts stay
integers or `Fraction`s until one final division, so every result is exact up to that one rounding and
does not depend on the order of items, raters or labels.

Degenerate data. When every rating falls in one category, expected (chance) agreement is 1 and the
chance-corrected coefficients (Cohen, Fleiss, Krippendorff) are 0/0; observed agreement is then 1 as well,
and by convention we return 1.0 (the raters never disagreed; there was nothing to correct for). Input
that cannot be scored at all (fewer than 2 raters, no item rated twice) raises ValueError.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from fractions import Fraction
from typing import Any

LabelsByItem = Mapping[Hashable, Mapping[Hashable, Hashable]]
Distance = Callable[[Hashable, Hashable], Fraction]


def _pairable_counts(labels_by_item: LabelsByItem) -> list[Counter]:
    """Label counts of every item with >= 2 ratings; ValueError when agreement cannot be measured."""
    raters: set[Hashable] = set()
    counts = []
    for item, ratings in labels_by_item.items():
        if not isinstance(ratings, Mapping):
            raise TypeError(f"ratings of item {item!r} must be a mapping rater -> label, "
                            f"got {type(ratings).__name__}")
        raters.update(ratings)
        if len(ratings) >= 2:
            counts.append(Counter(ratings.values()))
    if len(raters) < 2:
        raise ValueError(f"agreement needs at least 2 raters, got {len(raters)}")
    if not counts:
        raise ValueError("agreement needs at least one item rated by 2 or more raters")
    return counts


def _agreeing_pairs(counts: Counter) -> int:
    """Ordered pairs of ratings (from different raters) that agree: sum_c n_c (n_c - 1)."""
    return sum(n * (n - 1) for n in counts.values())


def percent_agreement(labels_by_item: LabelsByItem) -> float:
    """Mean over items of the fraction of rater pairs that agree (not chance-corrected).

        P_i = sum_c n_ic (n_ic - 1) / (m_i (m_i - 1)),    P = mean of P_i over items with m_i >= 2

    n_ic: ratings of item i in category c, m_i: ratings of item i. Items with fewer than 2 ratings are
    skipped. With equal m_i this is Fleiss' (1971) P-bar, the observed agreement of `fleiss_kappa`.
    """
    counts = _pairable_counts(labels_by_item)
    total = sum(Fraction(_agreeing_pairs(c), c.total() * (c.total() - 1)) for c in counts)
    return float(total / len(counts))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa for two raters who labelled the same items; a[i] and b[i] label item i.

        kappa = (p_o - p_e) / (1 - p_e),   p_o = (1/n) sum_i [a_i == b_i],
        p_e = sum_c (n_ac / n) (n_bc / n)

    n_ac, n_bc: how often each rater used category c. Cohen (1960), "A coefficient of agreement for
    nominal scales", Educational and Psychological Measurement 20(1), eq. 1. When p_e = 1 (both raters
    used one and the same category throughout, so p_o = 1 too) we return 1.0.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs the two raters to label the same items, got {len(a)} and {len(b)} labels")
    if not a:
        raise ValueError("cohen_kappa needs at least one item")
    n = len(a)
    agree = sum(x == y for x, y in zip(a, b))  # n * p_o
    count_a, count_b = Counter(a), Counter(b)
    chance = sum(count_a[c] * count_b[c] for c in count_a)  # n^2 * p_e
    if chance == n * n:
        return 1.0
    return (n * agree - chance) / (n * n - chance)  # numerator and denominator multiplied by n^2


def fleiss_kappa(labels_by_item: LabelsByItem) -> float:
    """Fleiss' kappa: many raters, the same number m >= 2 of ratings on every item (raters may differ).

        P_i = sum_j n_ij (n_ij - 1) / (m (m - 1)),   P-bar = (1/N) sum_i P_i
        p_j = (1 / (N m)) sum_i n_ij,                P-bar_e = sum_j p_j^2
        kappa = (P-bar - P-bar_e) / (1 - P-bar_e)

    N items, n_ij: ratings of item i in category j. Fleiss (1971), "Measuring nominal scale agreement
    among many raters", Psychological Bulletin 76(5), eqs. 2-9. Unequal or missing ratings raise
    ValueError (use `krippendorff_alpha`). When P-bar_e = 1 (one category throughout) we return 1.0.
    """
    counts = _pairable_counts(labels_by_item)
    sizes = {len(ratings) for ratings in labels_by_item.values()}
    if len(sizes) != 1:
        raise ValueError(f"fleiss_kappa needs the same number of ratings on every item, got {sorted(sizes)}; "
                         "krippendorff_alpha handles missing ratings")
    (m,) = sizes
    ratings = len(counts) * m  # N m
    observed = sum(_agreeing_pairs(c) for c in counts)  # N m (m - 1) P-bar
    totals = Counter()
    for c in counts:
        totals.update(c)
    chance = sum(t * t for t in totals.values())  # (N m)^2 P-bar_e
    if chance == ratings * ratings:
        return 1.0
    # kappa with numerator and denominator multiplied by (N m)^2 (m - 1).
    return (observed * ratings - chance * (m - 1)) / ((m - 1) * (ratings * ratings - chance))


# -- Krippendorff's alpha: difference functions delta^2(c, k), built from the value counts n_c -------------
def _numeric(n_c: Mapping[Hashable, int], level: str) -> dict[Hashable, Fraction]:
    try:
        return {v: Fraction(v) for v in n_c}  # exact, also for floats
    except (TypeError, ValueError):
        raise ValueError(f"level {level!r} needs finite numeric labels, got {sorted(map(repr, n_c))}") from None


def _nominal(n_c: Mapping[Hashable, int]) -> Distance:
    return lambda c, k: Fraction(c != k)


def _ordinal(n_c: Mapping[Hashable, int]) -> Distance:
    """delta^2 = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 over the ranks of the sorted labels."""
    try:
        order = sorted(n_c)
    except TypeError:
        raise ValueError(f"level 'ordinal' needs labels that sort, got {sorted(map(repr, n_c))}") from None
    rank = {v: r for r, v in enumerate(order)}
    cumulative = [0]
    for v in order:
        cumulative.append(cumulative[-1] + n_c[v])

    def delta(c: Hashable, k: Hashable) -> Fraction:
        lo, hi = sorted((rank[c], rank[k]))
        return Fraction(2 * (cumulative[hi + 1] - cumulative[lo]) - n_c[c] - n_c[k], 2) ** 2
    return delta


def _interval(n_c: Mapping[Hashable, int]) -> Distance:
    value = _numeric(n_c, "interval")
    return lambda c, k: (value[c] - value[k]) ** 2


def _ratio(n_c: Mapping[Hashable, int]) -> Distance:
    value = _numeric(n_c, "ratio")
    if min(value.values()) < 0:
        raise ValueError("level 'ratio' needs non-negative labels")
    return lambda c, k: ((value[c] - value[k]) / (value[c] + value[k])) ** 2 if c != k else Fraction(0)


DISTANCES: dict[str, Callable[[Mapping[Hashable, int]], Distance]] = {
    "nominal": _nominal, "ordinal": _ordinal, "interval": _interval, "ratio": _ratio}


def krippendorff_alpha(labels_by_item: LabelsByItem, level: str = "nominal") -> float:
    """Krippendorff's alpha in the coincidence-matrix form; handles missing and unequal ratings.

        o_ck  = sum_u (number of pairs (c, k) of ratings of unit u by different raters) / (m_u - 1)
        n_c   = sum_k o_ck,   n = sum_c n_c            (only units with m_u >= 2 ratings count)
        alpha = 1 - D_o / D_e = 1 - (n - 1) sum_{c,k} o_ck delta^2_ck / sum_{c,k} n_c n_k delta^2_ck

    delta^2 from DISTANCES[level]: nominal [c != k]; ordinal (sum_{g=c..k} n_g - (n_c + n_k)/2)^2;
    interval (c - k)^2; ratio ((c - k) / (c + k))^2. Krippendorff (2011), "Computing Krippendorff's
    Alpha-Reliability", sections A-E. Alpha is 1 for perfect agreement, 0 at chance, negative below.
    When only one value occurs among pairable ratings (D_e = 0, so D_o = 0) we return 1.0.
    """
    if level not in DISTANCES:
        raise ValueError(f"level must be one of {sorted(DISTANCES)}, got {level!r}")
    units = _pairable_counts(labels_by_item)
    # 1. Integer pair counts grouped by m_u, so that each group is divided by (m_u - 1) once.
    pairs_by_m: dict[int, Counter] = defaultdict(Counter)
    for counts in units:
        pairs = pairs_by_m[counts.total()]
        for c, n_uc in counts.items():
            for k, n_uk in counts.items():
                pairs[c, k] += n_uc * (n_uk - 1) if c == k else n_uc * n_uk
    coincidences: Counter = Counter()
    for m, pairs in pairs_by_m.items():
        for ck, p in pairs.items():
            coincidences[ck] += Fraction(p, m - 1)
    # 2. Marginals: each pairable rating adds exactly 1 to its row, so n_c is a plain count.
    n_c: Counter = Counter()
    for counts in units:
        n_c.update(counts)
    if len(n_c) == 1:
        return 1.0
    n = n_c.total()
    # 3. Observed and expected disagreement (both numerators; their common 1/n cancels).
    delta = DISTANCES[level](n_c)
    observed = sum(o * delta(c, k) for (c, k), o in coincidences.items())
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in n_c for k in n_c)
    return float(1 - (n - 1) * observed / expected)


def _leave_one_out(labels_by_item: LabelsByItem):
    """(item, rater, the rater's label, the other raters' majority) for every rating whose other raters have a
    single most frequent label (items with one rating, and ratings whose others tie, are skipped)."""
    _pairable_counts(labels_by_item)
    for item, ratings in labels_by_item.items():
        if len(ratings) < 2:
            continue
        counts = Counter(ratings.values())
        for rater, label in ratings.items():
            others = counts.copy()
            others[label] -= 1
            best = max(others.values())
            modes = [c for c, v in others.items() if v == best]
            if len(modes) == 1:  # a single majority among the others (when they are split there is none)
                yield item, rater, label, modes[0]


def _majority_hits(labels_by_item: LabelsByItem, predictions: Mapping | None = None
                   ) -> dict[Hashable, tuple[int, int]]:
    """rater -> (hits, items scored): a hit is the rater's own label, or `predictions[item]` when given,
    equal to the leave-one-out majority of the rater's item."""
    hits: Counter = Counter()
    scored: Counter = Counter()
    for item, rater, label, majority in _leave_one_out(labels_by_item):
        scored[rater] += 1
        hits[rater] += (label if predictions is None else predictions[item]) == majority
    return {rater: (hits[rater], s) for rater, s in scored.items()}


def majority_agreement(labels_by_item: LabelsByItem) -> dict[Hashable, float]:
    """Per rater, the fraction of their labels that equal the majority label of the OTHER raters.

        agree_r = |{i : label_ir = mode(labels of item i without rater r)}| / |{i scored for r}|

    Leave-one-out majority, as InstructGPT reports labeler agreement (Ouyang et al. 2022, "Training
    language models to follow instructions with human feedback", sec. 3.4 and appendix B). Items where
    the other raters' most frequent labels tie are skipped for that rater (no tie-breaking), as are items
    with a single rating; raters with no scored item are absent from the result. With two raters on an
    item the "majority" is the other rater's label, so this reduces to pairwise agreement. Not
    chance-corrected, so no expected-agreement convention is needed.
    """
    return {rater: h / s for rater, (h, s) in _majority_hits(labels_by_item).items()}


def predictor_majority_agreement(labels_by_item: LabelsByItem, predictions: Mapping) -> float | None:
    """A model scored as one more rater: against exactly the majorities `majority_agreement` scores the
    raters against, with the same weights.

        agree_model = mean over raters r of |{i : pred_i = mode(labels of item i without r)}| / |{i scored for r}|

    So it compares like with like with `agreement_report(...)["majority_agreement_mean"]`: the same items, the
    same targets (each rater's leave-one-out majority), the unweighted mean over the same raters. `predictions`
    maps every item to a label ("A", "B", or "tie"). None when no item has a majority to score against.
    """
    hits = _majority_hits(labels_by_item, predictions)
    return float(sum(Fraction(h, s) for h, s in hits.values()) / len(hits)) if hits else None


def agreement_report(labels_by_item: LabelsByItem) -> dict[str, Any]:
    """All the metrics above in one JSON-friendly dict (for string rater ids).

    Keys: n_items, n_raters, n_ratings, percent_agreement, fleiss_kappa (None unless every item has the
    same number >= 2 of ratings), krippendorff_alpha (nominal), majority_agreement (rater -> fraction),
    majority_agreement_mean (unweighted mean over the raters in majority_agreement; None if none was
    scored). Raises ValueError like the metrics (fewer than 2 raters, no item rated twice).
    """
    sizes = {len(ratings) for ratings in labels_by_item.values()}
    hits = _majority_hits(labels_by_item)
    per_rater = {rater: h / s for rater, (h, s) in hits.items()}
    mean = sum(Fraction(h, s) for h, s in hits.values()) / len(hits) if hits else None
    return {
        "n_items": len(labels_by_item),
        "n_raters": len({r for ratings in labels_by_item.values() for r in ratings}),
        "n_ratings": sum(len(ratings) for ratings in labels_by_item.values()),
        "percent_agreement": percent_agreement(labels_by_item),
        "fleiss_kappa": fleiss_kappa(labels_by_item) if len(sizes) == 1 and min(sizes) >= 2 else None,
        "krippendorff_alpha": krippendorff_alpha(labels_by_item),
        "majority_agreement": per_rater,
        "majority_agreement_mean": None if mean is None else float(mean),
    }

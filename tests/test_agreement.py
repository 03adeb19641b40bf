"""tether.math.agreement against published worked examples and hand-made ones (arithmetic in the comments)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.math.agreement import (
    agreement_report,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    majority_agreement,
    percent_agreement,
    predictor_majority_agreement,
)


def from_rows(rows: dict[str, list]) -> dict:
    """{rater: [label or None per unit]} (a reliability-data table) -> {unit: {rater: label}}."""
    n_units = len(next(iter(rows.values())))
    return {u: {r: labels[u] for r, labels in rows.items() if labels[u] is not None} for u in range(n_units)}


def from_category_counts(table: list[list[int]]) -> dict:
    """Fleiss' layout (one row per subject, n_ij raters chose category j) -> {subject: {rater: category}}."""
    return {i: dict(enumerate(j for j, n in enumerate(row) for _ in range(n))) for i, row in enumerate(table)}


# -- Cohen's kappa ---------------------------------------------------------------------------------
def test_cohen_kappa_wikipedia_example():
    # Wikipedia "Cohen's kappa", 50 grant proposals: both yes 20, both no 15, A yes/B no 5, A no/B yes 10.
    a = ["yes"] * 20 + ["no"] * 15 + ["yes"] * 5 + ["no"] * 10
    b = ["yes"] * 20 + ["no"] * 15 + ["no"] * 5 + ["yes"] * 10
    # p_o = (20 + 15) / 50 = 0.7; A says yes 25/50 = 0.5, B says yes 30/50 = 0.6
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.3 + 0.2 = 0.5;  kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert cohen_kappa(b, a) == pytest.approx(0.4, abs=1e-12)  # symmetric


def test_cohen_kappa_perfect_and_chance():
    labels = ["A", "B", "tie", "A", "B"]
    assert cohen_kappa(labels, labels) == 1.0
    # p_o = 2/4 (items 1 and 4); p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> kappa = 0
    assert cohen_kappa(["A", "A", "B", "B"], ["A", "B", "A", "B"]) == 0.0
    # Systematic disagreement: p_o = 0, p_e = 0.5 -> kappa = (0 - 0.5) / 0.5 = -1
    assert cohen_kappa(["A", "B", "A", "B"], ["B", "A", "B", "A"]) == -1.0


def test_cohen_kappa_expected_agreement_one_is_defined_as_one():
    assert cohen_kappa(["A"] * 3, ["A"] * 3) == 1.0  # p_e = 1, p_o = 1: 0/0 by the formula


def test_cohen_kappa_rejects_bad_input():
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="at least one item"):
        cohen_kappa([], [])


# -- Fleiss' kappa ---------------------------------------------------------------------------------
FLEISS_WIKIPEDIA = [  # Wikipedia "Fleiss' kappa": 10 subjects, 14 raters each, 5 categories
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_wikipedia_example():
    data = from_category_counts(FLEISS_WIKIPEDIA)
    # Column totals 20, 28, 39, 21, 32 of N m = 140 ratings:
    #   P-bar_e = (20^2 + 28^2 + 39^2 + 21^2 + 32^2) / 140^2 = 4170 / 19600 = 0.2128
    # sum_ij n_ij (n_ij - 1) = 182 + 46 + 56 + 80 + 60 + 84 + 44 + 32 + 52 + 52 = 688
    #   P-bar = 688 / (10 * 14 * 13) = 688 / 1820 = 0.3780
    # kappa = (0.3780 - 0.2128) / (1 - 0.2128) = 0.1653 / 0.7872 = 0.2099
    kappa = fleiss_kappa(data)
    assert kappa == pytest.approx(0.20993, abs=1e-5)
    assert percent_agreement(data) == pytest.approx(688 / 1820)  # P-bar is percent agreement
    p_bar = percent_agreement(data)
    assert (p_bar - kappa) / (1 - kappa) == pytest.approx(4170 / 19600)  # P-bar_e recovered from kappa


def test_fleiss_kappa_needs_equal_counts():
    with pytest.raises(ValueError, match="same number of ratings"):
        fleiss_kappa({1: {"r1": "A", "r2": "A"}, 2: {"r1": "A", "r2": "B", "r3": "B"}})
    with pytest.raises(ValueError, match="at least 2 raters"):
        fleiss_kappa({1: {"r1": "A"}, 2: {"r1": "B"}})
    assert fleiss_kappa({1: {"r1": "A", "r2": "A"}, 2: {"r1": "A", "r2": "A"}}) == 1.0  # P-bar_e = 1


# -- Krippendorff's alpha --------------------------------------------------------------------------
KRIPPENDORFF_2011 = {  # "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_krippendorff_alpha_paper_nominal_example():
    data = from_rows(KRIPPENDORFF_2011)
    # Unit 12 has one value and drops out; the other 40 values give n_1..n_5 = 9, 13, 10, 5, 3 (n = 40).
    # Diagonal coincidences sum_u sum_c n_uc (n_uc - 1) / (m_u - 1) per unit:
    #   3 + 2 + 4 + 4 + 4 + 0 + 4 + 2 + 4 + 3 + 2 = 32 (unit 6 is 1, 2, 3, 4: no agreeing pair)
    # alpha = 1 - (n - 1)(n - sum_c o_cc) / (n^2 - sum_c n_c^2)
    #       = 1 - 39 * (40 - 32) / (1600 - (81 + 169 + 100 + 25 + 9)) = 1 - 312 / 1216 = 0.7434
    assert krippendorff_alpha(data) == pytest.approx(1 - 312 / 1216, abs=1e-12)
    assert round(krippendorff_alpha(data, "nominal"), 3) == 0.743


def test_krippendorff_alpha_paper_other_levels():
    # Same data; the paper's sections D-E report ordinal 0.815, interval 0.849, ratio 0.797.
    data = from_rows(KRIPPENDORFF_2011)
    assert round(krippendorff_alpha(data, "ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(data, "interval"), 3) == 0.849
    assert round(krippendorff_alpha(data, "ratio"), 3) == 0.797


def test_krippendorff_alpha_wikipedia_example():
    # Wikipedia "Krippendorff's alpha", computational example: 3 coders, 15 units, many missing.
    data = from_rows({
        "A": [None] * 5 + [3, 4, 1, 2, 1, 1, 3, 3, None, 3],
        "B": [1, None, 2, 1, 3, 3, 4, 3] + [None] * 7,
        "C": [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
    })
    # Pairable values n_1..n_4 = 7, 4, 10, 5 (n = 26); sum_c o_cc = 20; sum_c n_c^2 = 49 + 16 + 100 + 25 = 190
    # alpha = 1 - 25 * (26 - 20) / (676 - 190) = 1 - 150 / 486 = 0.691
    assert krippendorff_alpha(data) == pytest.approx(1 - 150 / 486, abs=1e-12)
    assert round(krippendorff_alpha(data, "interval"), 3) == 0.811


def test_krippendorff_alpha_degenerate_and_errors():
    assert krippendorff_alpha({1: {"r1": "A", "r2": "A"}, 2: {"r1": "A", "r3": "A"}}) == 1.0  # D_e = 0
    # Perfect agreement on two values: D_o = 0 -> 1
    assert krippendorff_alpha({1: {"r1": "A", "r2": "A"}, 2: {"r1": "B", "r2": "B"}}) == 1.0
    with pytest.raises(ValueError, match="level must be one of"):
        krippendorff_alpha({1: {"r1": "A", "r2": "B"}}, level="cardinal")
    with pytest.raises(ValueError, match="numeric"):
        krippendorff_alpha({1: {"r1": "A", "r2": "B"}}, level="interval")
    with pytest.raises(ValueError, match="rated by 2 or more"):
        krippendorff_alpha({1: {"r1": "A"}, 2: {"r2": "B"}})


# -- percent and majority agreement on a hand-made example -----------------------------------------
HAND = {  # 4 raters, one missing on item 5; "tie" is a label, not a missing rating
    1: {"r1": "A", "r2": "A", "r3": "A", "r4": "A"},
    2: {"r1": "A", "r2": "A", "r3": "A", "r4": "B"},
    3: {"r1": "A", "r2": "A", "r3": "B", "r4": "B"},
    4: {"r1": "B", "r2": "A", "r3": "tie", "r4": "tie"},
    5: {"r1": "A", "r2": "B", "r3": "B"},
}


def test_percent_agreement_hand_example():
    # Agreeing pairs / all pairs per item: 6/6, 3/6 (AAA), 2/6 (AA, BB), 1/6 (tie-tie), 1/3 (BB)
    # mean = (1 + 1/2 + 1/3 + 1/6 + 1/3) / 5 = (7/3) / 5 = 7/15
    assert percent_agreement(HAND) == pytest.approx(7 / 15, abs=1e-12)
    assert percent_agreement({**HAND, 6: {"r1": "A"}}) == pytest.approx(7 / 15, abs=1e-12)  # 1 rating: skipped


def test_majority_agreement_hand_example():
    # Leave-one-out majority of the others per item (x: skipped, others tied):
    #   r1: A->A yes, AAB->A yes, ABB->B no, A/tie/tie->tie no (r1 said B), BB->B no      = 2/5
    #   r2: AAA yes, AAB->A yes, ABB->B no, B/tie/tie->tie no, A vs B x                    = 2/4
    #   r3: AAA yes, AAB->A yes, AAB->A no (r3 said B), B/A/tie x, A vs B x                = 2/3
    #   r4: AAA yes, AAA->A no (r4 said B), AAB->A no, B/A/tie x, not on item 5            = 1/3
    assert majority_agreement(HAND) == pytest.approx({"r1": 2 / 5, "r2": 1 / 2, "r3": 2 / 3, "r4": 1 / 3})
    two_raters = {1: {"x": "A", "y": "A"}, 2: {"x": "A", "y": "B"}, 3: {"x": "tie", "y": "tie"}}
    assert majority_agreement(two_raters) == pytest.approx({"x": 2 / 3, "y": 2 / 3})  # = pairwise agreement
    assert majority_agreement({1: {"a": "A", "b": "B", "c": "tie"}}) == {}  # every majority tied


def test_predictor_is_scored_against_the_raters_own_majorities():
    # The same leave-one-out majorities as above; prediction per item: 1 A, 2 A, 3 B, 4 tie, 5 B.
    #   r1: A yes, A yes, B yes, tie yes, B yes                = 5/5
    #   r2: A yes, A yes, B yes, tie yes, (item 5 skipped)     = 4/4
    #   r3: A yes, A yes, A no (pred B), (4, 5 skipped)        = 2/3
    #   r4: A yes, A yes, A no (pred B), (4 skipped)           = 2/3
    # mean over raters = (1 + 1 + 2/3 + 2/3) / 4 = 5/6
    predictions = {1: "A", 2: "A", 3: "B", 4: "tie", 5: "B"}
    assert predictor_majority_agreement(HAND, predictions) == pytest.approx(5 / 6, abs=1e-12)
    always_b = dict.fromkeys(HAND, "B")
    #   r1: A no, A no, B yes, tie no, B yes = 2/5; r2: no, no, yes, no = 1/4; r3: 0/3; r4: 0/3
    assert predictor_majority_agreement(HAND, always_b) == pytest.approx((2 / 5 + 1 / 4) / 4, abs=1e-12)
    assert predictor_majority_agreement({1: {"a": "A", "b": "B", "c": "tie"}}, {1: "A"}) is None


def test_agreement_report_hand_example():
    report = agreement_report(HAND)
    assert report["n_items"] == 5 and report["n_raters"] == 4 and report["n_ratings"] == 19
    assert report["percent_agreement"] == pytest.approx(7 / 15)
    assert report["fleiss_kappa"] is None  # item 5 has 3 ratings, the others 4
    assert report["krippendorff_alpha"] == krippendorff_alpha(HAND)
    assert report["majority_agreement"] == majority_agreement(HAND)
    # (2/5 + 1/2 + 2/3 + 1/3) / 4 = 1.9 / 4 = 0.475
    assert report["majority_agreement_mean"] == pytest.approx(0.475)
    complete = from_category_counts(FLEISS_WIKIPEDIA)
    assert agreement_report(complete)["fleiss_kappa"] == fleiss_kappa(complete)


def test_fewer_than_two_raters_is_an_error():
    one_rater = {1: {"r1": "A"}, 2: {"r1": "B"}}
    for metric in (percent_agreement, fleiss_kappa, krippendorff_alpha, majority_agreement, agreement_report):
        with pytest.raises(ValueError, match="at least 2 raters"):
            metric(one_rater)
    with pytest.raises(TypeError, match="mapping rater -> label"):
        percent_agreement({1: ["A", "B"]})


# -- properties ------------------------------------------------------------------------------------
LABELS = ["A", "B", "tie"]
labels_by_item = st.dictionaries(
    st.integers(0, 20),
    st.dictionaries(st.sampled_from(["r1", "r2", "r3", "r4"]), st.sampled_from(LABELS), min_size=2),
    min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(labels_by_item, st.permutations(LABELS), st.booleans())
def test_relabelling_by_a_bijection_changes_nothing(data, permuted, to_ints):
    rename = dict(zip(LABELS, permuted if not to_ints else [7, (0, 1), None]))
    renamed = {i: {r: rename[label] for r, label in ratings.items()} for i, ratings in data.items()}
    # Results are exact up to one final rounding, so equality (not approx) must hold.
    assert agreement_report(renamed) == agreement_report(data)
    assert krippendorff_alpha(renamed) == krippendorff_alpha(data)
    both = [ratings for ratings in data.values() if {"r1", "r2"} <= ratings.keys()]
    if both:
        a, b = [x["r1"] for x in both], [x["r2"] for x in both]
        assert cohen_kappa([rename[x] for x in a], [rename[x] for x in b]) == cohen_kappa(a, b)
        assert cohen_kappa(a, a) == 1.0


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.lists(st.lists(st.sampled_from(LABELS), min_size=4, max_size=4), min_size=1,
                                   max_size=10))
def test_alpha_is_fleiss_kappa_with_small_sample_correction(m, rows):
    # With m ratings on every item and n = N m values: alpha = 1 - (n - 1) / n * (1 - kappa_Fleiss)
    # (Krippendorff 2011 relates nominal alpha to Scott's pi / Fleiss' kappa this way).
    data = {i: {f"r{j}": label for j, label in enumerate(row[:m])} for i, row in enumerate(rows)}
    n = len(rows) * m
    kappa = fleiss_kappa(data)
    assert krippendorff_alpha(data) == pytest.approx(1 - (n - 1) / n * (1 - kappa), abs=1e-12)
    if m == 2:  # two raters, no missing: majority agreement is pairwise agreement
        assert set(majority_agreement(data).values()) == {percent_agreement(data)}


def test_reward_model_as_rater_orients_ratings_and_scores_like_a_rater():
    import torch

    from tether.data.preferences import Comparison
    from tether.stages.evaluate import reward_model_as_rater

    def rated(a, b, choice, rater):
        return Comparison("q", a, b, choice=choice, rater=rater)

    # Pair (good, bad) rated by three raters, one of them shown it flipped: oriented labels A, A, B.
    # Pair (x, y): A, B, tie. A row without a rater is ignored.
    rows = [rated("good", "bad", "A", "r1"), rated("bad", "good", "B", "r2"), rated("good", "bad", "B", "r3"),
            rated("x", "y", "A", "r1"), rated("x", "y", "B", "r2"), rated("x", "y", "tie", "r3"),
            rated("x", "y", "A", None)]

    def score(prompts, responses):  # prefers "good" and "x"
        return torch.tensor([1.0 if r in ("good", "x") else 0.0 for r in responses])

    out = reward_model_as_rater(score, rows)
    # Leave-one-out majorities: pair 1: r1 -> (A, B) split, skipped; r2 -> (A, B) skipped; r3 -> A.
    #   pair 2: every rater's others are split (B/tie, A/tie, A/B): skipped.
    # So only r3 is scored, on pair 1, against A; the RM says A: 1/1. The raters: r3 said B: 0/1.
    assert out == {"items": 2, "rm_vs_majority": 1.0, "rater_majority_agreement": 0.0,
                   "rater_pairwise_agreement": pytest.approx((1 / 3 + 0) / 2)}
    # A reward model that cannot tell them apart predicts "tie" (as a rater may): 0/1 against r3's majority A.
    flat = reward_model_as_rater(lambda prompts, responses: torch.zeros(len(responses)), rows)
    assert flat["rm_vs_majority"] == 0.0

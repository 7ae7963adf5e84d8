"""Risk-coverage curves against a direct computation."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from mtcsnn.grading.selective import REFERRED_SHARE, risk_coverage, uncertainty


def predictions(n: int, seed: int):
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5)) + 2.0 * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return grades, probs


@pytest.mark.parametrize("how", ["max_probability", "entropy"])
@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_at_each_coverage_is_that_of_the_surest_images(how, seed):
    grades, probs = predictions(200, seed)
    scores = uncertainty(probs, how)
    curve = risk_coverage(grades, probs, scores)
    correct = probs.argmax(1) == grades
    surest = np.argsort(scores, kind="stable")
    for kept in (200, 150, 100, 37, 1):
        i = list(curve["coverage"]).index(kept / 200)
        assert curve["accuracy"][i] == pytest.approx(correct[surest[:kept]].mean())
    assert curve["aurc"] == pytest.approx(np.mean(1 - curve["accuracy"]))
    # referring the uncertain helps: the kept 90% are more accurate than all images
    point = curve["at_referred_share"]
    kept = surest[: int(round(200 * (1 - REFERRED_SHARE)))]
    assert point["accuracy"] == pytest.approx(correct[kept].mean())
    assert point["accuracy"] > correct.mean()
    kappa = cohen_kappa_score(grades[kept], probs.argmax(1)[kept], weights="quadratic")
    assert point["kappa"] == pytest.approx(kappa)


def test_a_random_ranking_has_no_better_area_than_a_good_one():
    grades, probs = predictions(400, 3)
    good = risk_coverage(grades, probs, uncertainty(probs, "max_probability"))["aurc"]
    rng = np.random.default_rng(0)
    random = np.mean([risk_coverage(grades, probs, rng.random(400))["aurc"] for _ in range(20)])
    assert good < random


def test_screening_sensitivity_counts_the_referred_and_the_flagged():
    grades = np.array([0, 0, 2, 3, 4, 1, 2, 0, 0, 0])
    probs = np.eye(5)[[0, 0, 2, 0, 4, 1, 0, 0, 0, 0]] * 0.9 + 0.02
    scores = np.zeros(10)
    scores[3] = 1.0  # the most uncertain: a missed grade 3, sent to a person
    refer = probs[:, 2:].sum(1) >= 0.5  # flags images 2 and 4; misses 3 and 6
    point = risk_coverage(grades, probs, scores, refer=refer)["at_referred_share"]
    # referable: images 2, 3, 4, 6; caught: 2 and 4 flagged, 3 referred; 6 missed
    assert point["referable_sensitivity"] == pytest.approx(3 / 4)


def test_disagreement_is_zero_for_agreeing_members_and_needs_them():
    _, probs = predictions(10, 0)
    members = np.stack([probs, probs])
    assert uncertainty(probs, "disagreement", members) == pytest.approx(np.zeros(10))
    other = np.roll(probs, 1, axis=1)
    mixed = np.stack([probs, other])
    assert (uncertainty(mixed.mean(0), "disagreement", mixed) > 0).all()
    with pytest.raises(ValueError, match="members"):
        uncertainty(probs, "disagreement")


def test_score_margin_is_the_distance_to_the_nearest_val_band_boundary():
    from mtcsnn.grading.selective import score_margin

    val_grades = np.repeat(np.arange(5), 4)
    val_scores = val_grades.astype(float)  # bands split half-way: boundaries at 0.5 .. 3.5
    scores = np.array([0.5, 1.0, 2.4, 4.7, -3.0])
    expected = -np.abs(scores[:, None] - (np.arange(4) + 0.5)[None]).min(1) / np.std(val_scores)
    assert score_margin(scores, val_scores, val_grades) == pytest.approx(expected)
    # the score's direction is free: a model whose score falls with the grade is read the same
    flipped = score_margin(-scores, -val_scores, val_grades)
    assert flipped == pytest.approx(expected)
    # a score on a boundary is the least sure, one mid-band surer
    assert np.argmax(expected) == 0 and expected[1] < expected[2] < 0


def test_the_bootstrap_s_area_and_ece_match_one_model_s():
    from mtcsnn.grading.comparison import aurc, ece

    grades, probs = predictions(300, 4)
    probs = np.round(probs, 2)  # ties in the top probability: both must order them alike
    batch = np.stack([np.arange(300), np.roll(np.arange(300), 7)])
    areas = aurc(grades[batch], probs[batch])
    for row, area in zip(batch, areas, strict=True):
        g, p = grades[row], probs[row]
        curve = risk_coverage(g, p, uncertainty(p, "max_probability"))
        assert area == pytest.approx(curve["aurc"])
    # ECE (15 equal-width bins of the top probability) computed directly
    confidence, correct = probs.max(1), probs.argmax(1) == grades
    bins = np.searchsorted(np.linspace(0, 1, 16)[1:-1], confidence, side="left")
    expected = sum(
        abs(confidence[bins == b].mean() - correct[bins == b].mean()) * (bins == b).mean()
        for b in np.unique(bins)
    )
    # torchmetrics sums in float32
    assert ece(grades[None], probs[None])[0] == pytest.approx(expected, abs=1e-6)

"""Referable DR and calibration figures against independent computations (scikit-learn, NumPy)."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from mtcsnn.errors import ConfigError
from mtcsnn.grading.calibration import calibration, fit_temperature, scaled
from mtcsnn.grading.referral import (
    ReferralSettings,
    choose_threshold,
    referable_metrics,
    referable_probability,
    referral_settings,
)


def predictions(n: int, seed: int, skill: float = 1.5):
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5)) + skill * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return grades, probs


@pytest.mark.parametrize("cut", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_referable_auroc_is_scikit_learns_on_the_summed_probabilities(cut, seed):
    grades, probs = predictions(300, seed)
    p = probs[:, cut:].sum(1)
    assert referable_probability(probs, cut).numpy() == pytest.approx(p)
    got = referable_metrics(grades, probs, cut, threshold=0.5)
    assert got["auroc"] == pytest.approx(roc_auc_score(grades >= cut, p))
    refer, positive = p >= 0.5, grades >= cut
    assert got["sensitivity"] == pytest.approx((refer & positive).sum() / positive.sum())
    assert got["specificity"] == pytest.approx((~refer & ~positive).sum() / (~positive).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_youden_threshold_is_the_one_scikit_learns_curve_gives(seed):
    grades, probs = predictions(120, seed)
    p = probs[:, 2:].sum(1)
    fpr, tpr, thresholds = roc_curve(grades >= 2, p)
    expected = thresholds[np.argmax(tpr - fpr)]
    assert choose_threshold(
        grades, probs, 2, ReferralSettings(threshold_rule="youden")
    ) == pytest.approx(expected)


@pytest.mark.parametrize("target", [0.5, 0.87, 0.95, 1.0])
def test_target_sensitivity_picks_the_most_specific_threshold_that_reaches_it(target):
    grades, probs = predictions(200, 5)
    threshold = choose_threshold(grades, probs, 2, ReferralSettings(target_sensitivity=target))
    p, positive = probs[:, 2:].sum(1), grades >= 2
    reached = lambda t: ((p >= t) & positive).sum() / positive.sum() >= target  # noqa: E731
    assert reached(threshold)
    # any higher threshold (the next distinct probability above it) refers too few
    higher = p[p > threshold]
    if len(higher):
        assert not reached(higher.min())


def test_one_class_only_gives_no_auroc_and_no_threshold():
    grades = np.array([0, 1, 0, 1])
    probs = np.full((4, 5), 0.2)
    assert choose_threshold(grades, probs, 2, ReferralSettings()) is None
    got = referable_metrics(grades, probs, 2, None)
    assert got == {"auroc": None, "sensitivity": None, "specificity": None, "threshold": None}
    got = referable_metrics(grades, probs, 2, 0.7)  # P(referable) is 0.6: none referred
    assert got["sensitivity"] is None and got["specificity"] == 1.0


def test_a_cut_outside_the_grades_and_an_unknown_rule_are_refused():
    with pytest.raises(ConfigError, match="referable_cuts=5"):
        referable_probability(np.full((2, 5), 0.2), 5)
    with pytest.raises(ConfigError, match="threshold_rule='f1'"):
        ReferralSettings(threshold_rule="f1")
    with pytest.raises(ConfigError, match="target_sensitivity=1.5"):
        ReferralSettings(target_sensitivity=1.5)
    for cuts in ([], [2, 2], [0], [5], [True], "2"):
        with pytest.raises(ConfigError, match="referable_cuts"):
            ReferralSettings(referable_cuts=cuts)


def test_a_runs_grading_section_gives_its_settings_and_the_defaults_for_what_it_lacks():
    """A metrics.json's config (a report reads runs of any version, from anyone)."""
    given = {"referable_cuts": [3], "threshold_rule": "youden", "target_sensitivity": 0.9}
    assert referral_settings(given) == ReferralSettings((3,), "youden", 0.9)
    assert referral_settings(None) == ReferralSettings()
    assert referral_settings({"threshold_rule": "youden"}) == ReferralSettings(
        threshold_rule="youden"
    )
    for bad in ({"referable_cuts": 2}, {"target_sensitivity": "high"}, "youden", [2, 3]):
        with pytest.raises(ConfigError):
            referral_settings(bad)


def numpy_ece(grades, probs, bins=15):
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = predicted == grades
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_figures_match_direct_computations(seed):
    grades, probs = predictions(400, seed, skill=2.0)
    got = calibration(grades, probs)
    assert got["ece"] == pytest.approx(numpy_ece(grades, probs), abs=1e-6)
    onehot = np.eye(5)[grades]
    assert got["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    assert got["nll"] == pytest.approx(log_loss(grades, probs, labels=range(5)))


def test_a_perfectly_confident_correct_grader_is_calibrated():
    grades = np.arange(10) % 5
    got = calibration(grades, np.eye(5)[grades])
    assert got["ece"] == pytest.approx(0.0) and got["brier"] == pytest.approx(0.0)


def test_temperature_scaling_undoes_a_known_overconfidence():
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=1.5, size=(20000, 5))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    grades = np.array([rng.choice(5, p=row) for row in true])
    overconfident = np.exp(2 * logits) / np.exp(2 * logits).sum(1, keepdims=True)
    temperature = fit_temperature(grades, overconfident)
    assert temperature == pytest.approx(2.0, rel=0.05)
    fixed = scaled(overconfident, temperature).numpy()
    assert (fixed.argmax(1) == overconfident.argmax(1)).all()  # no grade changes
    assert calibration(grades, fixed)["ece"] < calibration(grades, overconfident)["ece"] / 3
    assert calibration(grades, fixed)["nll"] < calibration(grades, overconfident)["nll"]

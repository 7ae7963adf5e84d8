"""Grades from the severity score: fitted thresholds and pairwise inference."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtcsnn.grading.score_decoding import (
    apply_thresholds,
    fit_thresholds,
    label_metrics,
    pairwise_grades,
)


def brute_force_best_accuracy(scores: torch.Tensor, grades: torch.Tensor, k: int = 3) -> float:
    """Best accuracy of any monotone increasing split into k bands (small inputs only)."""
    order = torch.argsort(scores)
    g = grades[order].tolist()
    n = len(g)
    best = 0
    for cuts in itertools.combinations_with_replacement(range(n + 1), k - 1):
        bounds = (0, *cuts, n)
        correct = sum(
            g[i] == band for band in range(k) for i in range(bounds[band], bounds[band + 1])
        )
        best = max(best, correct)
    return best / n


@pytest.mark.parametrize("seed", range(5))
def test_thresholds_reach_the_best_monotone_accuracy(seed):
    gen = torch.Generator().manual_seed(seed)
    grades = torch.randint(0, 3, (9,), generator=gen)
    scores = grades.float() + 1.2 * torch.randn(9, generator=gen)
    direction, thresholds = fit_thresholds(scores, grades, num_classes=3)
    assert direction == 1.0 and (thresholds[1:] >= thresholds[:-1]).all()
    pred = apply_thresholds(scores, direction, thresholds)
    accuracy = float((pred == grades).float().mean())
    assert accuracy == pytest.approx(brute_force_best_accuracy(scores, grades))


def test_thresholds_orient_a_decreasing_score():
    grades = torch.tensor([0, 0, 1, 2, 3, 4, 4])
    scores = -2.0 * grades.float()
    direction, thresholds = fit_thresholds(scores, grades)
    assert direction == -1.0
    assert torch.equal(apply_thresholds(scores, direction, thresholds), grades)


@pytest.mark.parametrize("difference", ["absolute", "signed"])
def test_pairwise_inference_recovers_grades_from_exact_scores(difference):
    ref_grades = torch.tensor([0, 0, 1, 2, 2, 3, 4])
    ref_scores = ref_grades.float() + 10  # any offset: only differences count
    test_grades = torch.tensor([4, 0, 2, 1, 3])
    got = pairwise_grades(test_grades.float() + 10, ref_scores, ref_grades, difference=difference)
    assert torch.equal(got, test_grades)


def test_label_metrics_by_hand():
    m = label_metrics(torch.tensor([0, 2, 4, 1]), torch.tensor([0, 1, 2, 1]))
    assert m["acc"] == pytest.approx(0.5)
    assert m["mae"] == pytest.approx(0.75)
    assert m["acc_within1"] == pytest.approx(0.75)

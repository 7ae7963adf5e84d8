"""Comparing two models on the same test images: AUROC and accuracy of many resamples at once,
and a paired bootstrap of their difference. Pure NumPy, used by ``mtcsnn.report``."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

# one run's test predictions: grades (n,) and class probabilities (n, C)
Predictions = tuple[np.ndarray, np.ndarray]


def ovr_auroc(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUROC (MedMNIST's definition) of each row of a batch of resamples.

    ``grades``: (B, n) ints, ``probs``: (B, n, C). Uses the rank-sum form of the AUROC, with
    ties counted as half, so B resamples cost one sort each.
    """
    grades, probs = np.atleast_2d(grades), probs.reshape(-1, *probs.shape[-2:])
    total = np.zeros(grades.shape[0])
    num_classes = probs.shape[-1]
    for c in range(num_classes):
        positive = grades == c
        n_pos = positive.sum(1)
        n_neg = positive.shape[1] - n_pos
        ranks = rankdata(probs[..., c], axis=1)
        rank_sum = (ranks * positive).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            total += (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return total / num_classes


def accuracy(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return (probs.argmax(-1) == grades).mean(-1)


PAIRED_METRICS = {"auroc": ovr_auroc, "acc": accuracy}


def paired_difference(
    pairs: list[tuple[Predictions, Predictions]],
    metric: str,
    num_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean over seed pairs of metric(a) - metric(b), with a bootstrap 95% CI over test images.

    Each side of a pair is ``(grades (n,), probs (n, C))`` of one run on the same test images;
    the same resampled images are used for both runs of every pair (a paired bootstrap).
    """
    fn = PAIRED_METRICS[metric]
    n = len(pairs[0][0][0])
    for i, ((grades_a, _), (grades_b, _)) in enumerate(pairs):
        if len(grades_a) != n or not np.array_equal(grades_a, grades_b):
            raise ValueError(f"pair {i} was not tested on the same images")
    point = float(
        np.mean(
            [fn(ga[None], pa[None])[0] - fn(gb[None], pb[None])[0] for (ga, pa), (gb, pb) in pairs]
        )
    )
    idx = np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))
    deltas = np.zeros(num_resamples)
    for (grades_a, probs_a), (_, probs_b) in pairs:
        grades = grades_a[idx]
        deltas += fn(grades, probs_a[idx]) - fn(grades, probs_b[idx])
    deltas /= len(pairs)
    low, high = np.nanpercentile(deltas, [2.5, 97.5])
    return point, float(low), float(high)


def quadratic_kappa(grades: np.ndarray, pred: np.ndarray, num_classes: int = 5) -> float:
    """Cohen's kappa with quadratic weights (as torchmetrics' ``weights="quadratic"``)."""
    observed = np.zeros((num_classes, num_classes))
    np.add.at(observed, (grades, pred), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1)
    i, j = np.indices((num_classes, num_classes))
    weights = (i - j) ** 2 / (num_classes - 1) ** 2
    denominator = (weights * expected).sum()
    return float(1 - (weights * observed).sum() / denominator) if denominator else 0.0


def grade_scores(grades: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUROC, accuracy, quadratic kappa and MAE of class probabilities (N x C)."""
    pred = probs.argmax(-1)
    return {
        "auroc": float(ovr_auroc(grades[None], probs[None])[0]),
        "acc": float((pred == grades).mean()),
        "kappa": quadratic_kappa(grades, pred, probs.shape[-1]),
        "mae": float(np.abs(pred - grades).mean()),
    }

"""Comparing two models on the same test images: AUROC, accuracy, referable AUROC, ECE and the
area under the risk-coverage curve of many resamples at once, and a paired bootstrap of their
difference. NumPy (and torchmetrics' ECE), used by ``mtcsnn.report``."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from mtcsnn.grading.calibration import top_grade_ece

# one run's test predictions: grades (n,) and class probabilities (n, C)
Predictions = tuple[np.ndarray, np.ndarray]


def ovr_auroc(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUROC (MedMNIST's definition) of each row of a batch of resamples.

    ``grades``: (B, n) ints, ``probs``: (B, n, C). Uses the rank-sum form of the AUROC, with
    ties counted as half, so B resamples cost one sort each. The mean is over the grades
    present in each row (a grade without images has no AUROC); NaN where fewer than two
    grades are present, as AUROC is then undefined.
    """
    grades, probs = np.atleast_2d(grades), probs.reshape(-1, *probs.shape[-2:])
    total = np.zeros(grades.shape[0])
    counted = np.zeros(grades.shape[0])
    num_classes = probs.shape[-1]
    for c in range(num_classes):
        positive = grades == c
        n_pos = positive.sum(1)
        n_neg = positive.shape[1] - n_pos
        defined = (n_pos > 0) & (n_neg > 0)
        ranks = rankdata(probs[..., c], axis=1)
        rank_sum = (ranks * positive).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        total += np.where(defined, auroc, 0.0)
        counted += defined
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counted > 1, total / counted, np.nan)


def absent_grades(grades: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """The grades 0..num_classes-1 without any image in ``grades``."""
    present = set(np.unique(np.asarray(grades)).tolist())
    return tuple(c for c in range(num_classes) if c not in present)


def absent_grades_message(split: str, absent: tuple[int, ...], num_classes: int) -> str | None:
    """What AUROC means on a split that lacks grades (``absent``); None when none is absent."""
    if not absent:
        return None
    present = [c for c in range(num_classes) if c not in absent]
    listed = ", ".join(map(str, absent))
    if len(present) < 2:
        has = f"grade {present[0]} only" if present else "no images"
        return (
            f"{split}: {has}; AUROC needs images of at least two grades, so it is undefined "
            "(NaN), not a score"
        )
    return (
        f"{split}: no images of grade {listed}; AUROC is the mean over the {len(present)} grades "
        f"present ({', '.join(map(str, present))})"
    )


def accuracy(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return (probs.argmax(-1) == grades).mean(-1)


# referable DR in the report's comparisons: more than mild (grade >= 2)
REFERABLE_CUT = 2


def referable_auroc(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """AUROC of P(grade >= 2) (the sum of those grades' probabilities) for referable DR, for
    each row of a batch of resamples (rank-sum form, ties as half); NaN where a row lacks
    referable or non-referable images."""
    grades, probs = np.atleast_2d(grades), probs.reshape(-1, *probs.shape[-2:])
    positive = grades >= REFERABLE_CUT
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    ranks = rankdata(probs[..., REFERABLE_CUT:].sum(-1), axis=1)
    rank_sum = (ranks * positive).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auroc, np.nan)


def ece(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ECE of the top grade's probability (:func:`top_grade_ece`) of each row of a batch."""
    grades, probs = np.atleast_2d(grades), probs.reshape(-1, *probs.shape[-2:])
    return np.array([top_grade_ece(g, p) for g, p in zip(grades, probs, strict=True)])


def area_under_risk_coverage(correct: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """Mean error of the images kept, over every number kept, as the most uncertain images are
    referred first (equal uncertainty: the later image first); per row of a batch."""
    kept_first = np.argsort(-uncertainty, axis=-1, kind="stable")[..., ::-1]
    kept_correct = np.take_along_axis(correct, kept_first, axis=-1)
    counts = np.arange(1, correct.shape[-1] + 1)
    return (1.0 - np.cumsum(kept_correct, axis=-1) / counts).mean(-1)


def aurc(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Area under the risk-coverage curve referring by the top probability, per row."""
    return area_under_risk_coverage(probs.argmax(-1) == grades, 1.0 - probs.max(-1))


PAIRED_METRICS = {
    "auroc": ovr_auroc,
    "acc": accuracy,
    "referable_auroc": referable_auroc,
    "ece": ece,
    "aurc": aurc,
}


def _pair_deltas(
    pairs: list[tuple[Predictions, Predictions]], metric: str, num_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Per pair, metric(a) - metric(b): on the test images (P,), and on each of the same
    ``num_resamples`` resamples of them (P, R); and the generator, to draw on from."""
    fn = PAIRED_METRICS[metric]
    n = len(pairs[0][0][0])
    for i, ((grades_a, _), (grades_b, _)) in enumerate(pairs):
        if len(grades_a) != n or not np.array_equal(grades_a, grades_b):
            raise ValueError(f"pair {i} was not tested on the same images")
    points = np.array(
        [fn(ga[None], pa[None])[0] - fn(gb[None], pb[None])[0] for (ga, pa), (gb, pb) in pairs]
    )
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_resamples, n))
    deltas = np.stack([fn(ga[idx], pa[idx]) - fn(ga[idx], pb[idx]) for (ga, pa), (_, pb) in pairs])
    return points, deltas, rng


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
    points, deltas, _ = _pair_deltas(pairs, metric, num_resamples, seed)
    low, high = np.nanpercentile(deltas.sum(0) / len(pairs), [2.5, 97.5])
    return float(np.mean(points)), float(low), float(high)


def pooled_difference(
    pairs: list[tuple[Predictions, Predictions]],
    metric: str,
    num_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean over pairs of metric(a) - metric(b), with a 95% CI from a bootstrap over both the
    pairs and the test images.

    For pairs from several configurations (recipes, lambdas, backbones): each resample draws
    the pairs with replacement as well as the images, so the interval also counts how much the
    difference moves from one seed or configuration to the next, which a bootstrap over the
    images alone leaves out. Pairs are taken as independent draws.
    """
    points, deltas, rng = _pair_deltas(pairs, metric, num_resamples, seed)
    drawn = rng.integers(0, len(pairs), size=(num_resamples, len(pairs)))
    resampled = deltas[drawn, np.arange(num_resamples)[:, None]].mean(1)
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return float(np.mean(points)), float(low), float(high)


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
    """AUROC, accuracy, quadratic kappa and MAE of class probabilities (N x C).

    AUROC is the mean over the grades present (NaN with fewer than two, see :func:`ovr_auroc`).
    """
    pred = probs.argmax(-1)
    return {
        "auroc": float(ovr_auroc(grades[None], probs[None])[0]),
        "acc": float((pred == grades).mean()),
        "kappa": quadratic_kappa(grades, pred, probs.shape[-1]),
        "mae": float(np.abs(pred - grades).mean()),
    }


def grade_figures(grades: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """:func:`grade_scores` and the off-by-one accuracy: the grade metrics a run's pass logs."""
    within = float(np.mean(np.abs(probs.argmax(-1) - grades) <= 1))
    return {**grade_scores(grades, probs), "acc_within1": within}

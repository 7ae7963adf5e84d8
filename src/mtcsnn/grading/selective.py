"""Knowing when not to answer: grade the images the model is surest of, refer the rest to a
person, and see how accuracy grows as more are referred (risk-coverage curves).

Uncertainty of an image, from its class probabilities: one minus the top probability
(``max_probability``), or the entropy (``entropy``); for a seed ensemble also the members'
disagreement (``disagreement``: the mean over members of the total-variation distance between
a member's probabilities and the ensemble's). For a multi-task model also its severity score's
distance to the nearest boundary between grade bands fitted on val (``score_margin``, in units
of the val scores' spread, so the members of an ensemble can be averaged). NumPy, and the val
bands of :mod:`mtcsnn.grading.score_decoding`.
"""

from __future__ import annotations

import numpy as np
import torch

from mtcsnn.grading.comparison import area_under_risk_coverage, quadratic_kappa
from mtcsnn.grading.score_decoding import fit_thresholds

UNCERTAINTIES = ("max_probability", "entropy")
ENSEMBLE_UNCERTAINTIES = (*UNCERTAINTIES, "disagreement")
SCORE_MARGIN = "score_margin"  # a multi-task model's: needs its scores, not only probabilities
# the operating point the report names: refer the most uncertain 10% to a person
REFERRED_SHARE = 0.10


def uncertainty(probs: np.ndarray, how: str, members: np.ndarray | None = None) -> np.ndarray:
    """Each image's uncertainty (higher: refer sooner). ``members``: (M, n, C), for
    ``disagreement``."""
    if how == "max_probability":
        return 1.0 - probs.max(1)
    if how == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    if how == "disagreement":
        if members is None:
            raise ValueError("disagreement needs the ensemble's members")
        return 0.5 * np.abs(members - probs[None]).sum(2).mean(0)
    raise ValueError(f"unknown uncertainty {how!r}: use one of {ENSEMBLE_UNCERTAINTIES}")


def score_margin(
    scores: np.ndarray, val_scores: np.ndarray, val_grades: np.ndarray, num_classes: int = 5
) -> np.ndarray:
    """Each image's uncertainty from its severity score: minus the distance of the score to the
    nearest boundary of the grade bands that fit the val images best
    (:func:`mtcsnn.grading.score_decoding.fit_thresholds`), over the val scores' standard
    deviation. A score on a boundary (0) is the least sure; higher: refer sooner."""
    direction, thresholds = fit_thresholds(
        torch.as_tensor(val_scores, dtype=torch.float64),
        torch.as_tensor(val_grades, dtype=torch.long),
        num_classes,
    )
    spread = float(np.std(val_scores)) or 1.0
    placed = direction * np.asarray(scores, dtype=np.float64)
    distance = np.abs(placed[:, None] - thresholds.double().numpy()[None, :]).min(1)
    return -distance / spread


def risk_coverage(
    grades: np.ndarray,
    probs: np.ndarray,
    scores: np.ndarray,
    refer: np.ndarray | None = None,
    cut: int = 2,
) -> dict:
    """Accuracy of the images kept as the most uncertain (``scores``, higher first) are
    referred to a person one by one (equal scores in image order).

    Returns ``coverage`` (the share kept, from 1 down to 1/n), ``accuracy`` of the kept images
    at each coverage, ``aurc`` (the area under the risk-coverage curve: the mean error over
    coverages; lower is better) and, at :data:`REFERRED_SHARE` referred: accuracy and quadratic
    kappa of the kept images, and with ``refer`` (the model's referral of each image) the
    screening sensitivity for grade >= ``cut``: referable images the model refers or sends to a
    person, over all referable images.
    """
    n = len(grades)
    order = np.argsort(-scores, kind="stable")  # most uncertain first: referred first
    correct = probs.argmax(1) == grades
    kept_order = order[::-1]  # surest first
    kept_correct = np.cumsum(correct[kept_order])  # kept = the k surest, k = 1..n
    counts = np.arange(1, n + 1)
    accuracy = kept_correct / counts
    coverage = counts / n
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    keep = int(round(n * (1 - REFERRED_SHARE)))
    kept = kept_order[:keep]
    operating_point = {
        "referred": REFERRED_SHARE,
        "accuracy": float(correct[kept].mean()),
        "kappa": quadratic_kappa(grades[kept], pred[kept], num_classes),
    }
    referable = grades >= cut
    if refer is not None and referable.any():
        deferred = np.ones(n, dtype=bool)
        deferred[kept] = False
        caught = referable & (deferred | refer.astype(bool))
        operating_point["referable_sensitivity"] = float(caught.sum() / referable.sum())
    return {
        "coverage": coverage[::-1],
        "accuracy": accuracy[::-1],
        "aurc": float(area_under_risk_coverage(correct, scores)),
        "at_referred_share": operating_point,
    }

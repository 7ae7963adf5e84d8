"""What a checkpoint chosen on val is worth: the best-epoch val AUROC is the maximum of many
noisy evaluations on the same images, so it rises with the noise of a run's val curve. Here the
epoch is chosen on one half of the val images and scored on the other. Pure NumPy."""

from __future__ import annotations

import numpy as np

from mtcsnn.grading import metric_mode
from mtcsnn.grading.comparison import accuracy, ovr_auroc, quadratic_kappa


def val_halves(grades: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the val images with each grade split evenly: within a grade, the images
    in index order go to the first half, the second, the first, ... (no randomness)."""
    grades = np.asarray(grades)
    first, second = [], []
    for grade in np.unique(grades):
        images = np.flatnonzero(grades == grade)
        first.append(images[0::2])
        second.append(images[1::2])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def epoch_values(grades: np.ndarray, probs: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` (a name the checkpoint may monitor: auroc, loss, acc, ...) of each epoch's
    probabilities (epochs, n, classes) against the grades (n,), as the run logs it on val."""
    pred = probs.argmax(-1)
    if metric == "auroc":
        return ovr_auroc(np.broadcast_to(grades, pred.shape), probs)
    if metric == "loss":  # the negative log-likelihood of the true grade
        return -np.log(np.clip(probs[:, np.arange(len(grades)), grades], 1e-12, None)).mean(1)
    if metric == "acc":
        return accuracy(grades, probs)
    if metric == "mae":
        return np.abs(pred - grades).mean(1)
    if metric == "acc_within1":
        return (np.abs(pred - grades) <= 1).mean(1)
    if metric == "kappa":
        return np.array([quadratic_kappa(grades, p, probs.shape[-1]) for p in pred])
    if metric.startswith("recall_") and metric[7:].isdigit():
        of_grade = grades == int(metric[7:])
        if not of_grade.any():
            return np.zeros(len(probs))
        return (pred[:, of_grade] == grades[of_grade]).mean(1)
    raise ValueError(f"no per-epoch value for {metric!r}")


def held_out_auroc(grades: np.ndarray, probs: np.ndarray, choose_by: str = "val/auroc") -> float:
    """Val AUROC of the epoch chosen on the other half of the val images, both ways, averaged.

    ``grades``: (n,) val grades; ``probs``: (epochs, n, classes), every training epoch's val
    probabilities. Each half chooses the epoch the run's checkpoint rule would (``choose_by``,
    its ``optimized_metric``: the highest AUROC by default, the lowest loss for ``val/loss``;
    the first of ties, as the checkpoint callback keeps the first), which is then scored on
    the other half; the noise that lifts a maximum on the choosing half does not follow it
    there. NaN when a half lacks a grade (a grade with one val image).
    """
    grades, probs = np.asarray(grades), np.asarray(probs, dtype=float)
    if probs.ndim != 3 or probs.shape[1] != len(grades) or len(probs) == 0:
        raise ValueError(f"probs must be (epochs, {len(grades)}, classes); got {probs.shape}")
    name = choose_by.removeprefix("val/")
    sign = -1.0 if metric_mode(name) == "min" else 1.0
    halves = val_halves(grades)
    scores = []
    for choose, score in (halves, halves[::-1]):
        if len(np.unique(grades[choose])) < len(np.unique(grades)):
            return float("nan")
        best = int(np.argmax(sign * epoch_values(grades[choose], probs[:, choose], name)))
        scores.append(ovr_auroc(grades[score][None], probs[best, score][None])[0])
    if np.isnan(scores).any():
        return float("nan")
    return float(np.mean(scores))

"""What a checkpoint chosen on val is worth: the best-epoch val AUROC is the maximum of many
noisy evaluations on the same images, so it rises with the noise of a run's val curve. Here the
epoch is chosen on one half of the val images and scored on the other. Pure NumPy."""

from __future__ import annotations

import numpy as np

from mtcsnn.grading.comparison import ovr_auroc


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


def held_out_auroc(grades: np.ndarray, probs: np.ndarray) -> float:
    """Val AUROC of the epoch chosen on the other half of the val images, both ways, averaged.

    ``grades``: (n,) val grades; ``probs``: (epochs, n, classes), every training epoch's val
    probabilities. Each half chooses the epoch with its highest AUROC (the first of ties, as
    the checkpoint callback keeps the first), which is then scored on the other half; the
    noise that lifts a maximum on the choosing half does not follow it there. NaN when a
    half lacks a grade (a grade with one val image).
    """
    grades, probs = np.asarray(grades), np.asarray(probs, dtype=float)
    if probs.ndim != 3 or probs.shape[1] != len(grades) or len(probs) == 0:
        raise ValueError(f"probs must be (epochs, {len(grades)}, classes); got {probs.shape}")
    halves = val_halves(grades)
    scores = []
    for choose, score in (halves, halves[::-1]):
        per_epoch = ovr_auroc(
            np.broadcast_to(grades[choose], (len(probs), len(choose))), probs[:, choose]
        )
        if np.isnan(per_epoch).any():
            return float("nan")
        best = int(np.argmax(per_epoch))
        scores.append(ovr_auroc(grades[score][None], probs[best, score][None])[0])
    return float(np.mean(scores))

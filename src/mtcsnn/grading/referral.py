"""What a screening programme asks of a grader: refer or not, and how far to trust the answer.

Referable DR is "more than mild": grade >= 2 (the cut the IDx-DR trial and Gulshan et al.
report); grade >= 3 is the usual second row. A model's probability of a referable image is the
sum of its probabilities of those grades. The threshold that turns it into a referral is
chosen on val, by a rule (a target sensitivity, or Youden's J), and applied to test unchanged.

Calibration: the expected calibration error of the top-grade probability (15 equal-width bins,
torchmetrics), the multi-class Brier score and the negative log-likelihood.

Pure functions of grades and probabilities (NumPy or torch in, floats out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_roc,
    multiclass_calibration_error,
)

ECE_BINS = 15


@dataclass(frozen=True)
class ThresholdRule:
    """How val chooses the referral threshold: ``youden`` (max sensitivity + specificity - 1)
    or ``sensitivity`` (the highest threshold whose val sensitivity reaches ``target``, so the
    most specific one that refers enough)."""

    name: str = "sensitivity"
    target: float = 0.87

    def __post_init__(self) -> None:
        if self.name not in ("youden", "sensitivity"):
            raise ValueError(f"referable.rule={self.name!r}: use youden or sensitivity")
        if self.name == "sensitivity" and not 0.0 < self.target <= 1.0:
            raise ValueError(f"referable.target_sensitivity={self.target}: use a value in (0, 1]")


def _tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def referable_probability(probs, cut: int) -> torch.Tensor:
    """P(grade >= cut) of each image: the sum of those grades' probabilities."""
    probs = _tensor(probs)
    if not 1 <= cut < probs.shape[1]:
        raise ValueError(f"referable cut {cut}: use a grade in 1..{probs.shape[1] - 1}")
    return probs[:, cut:].sum(1)


def _both_classes(referable: torch.Tensor) -> bool:
    return bool(referable.any()) and not bool(referable.all())


def choose_threshold(grades, probs, cut: int, rule: ThresholdRule) -> float | None:
    """The referral threshold ``rule`` chooses on these (val) images; None when they do not
    hold both referable and non-referable images (no threshold can be chosen on them)."""
    referable = _tensor(grades, torch.long) >= cut
    if not _both_classes(referable):
        return None
    p = referable_probability(probs, cut)
    fpr, tpr, thresholds = binary_roc(p, referable.long())
    if rule.name == "youden":
        best = int(torch.argmax(tpr - fpr))
    else:  # thresholds fall as tpr rises: the first that reaches the target is the highest
        best = int(torch.nonzero(tpr >= rule.target - 1e-12)[0])
    return float(thresholds[best])


def referable_metrics(grades, probs, cut: int, threshold: float | None) -> dict[str, float | None]:
    """AUROC of P(grade >= cut), and sensitivity / specificity of referring at
    ``p >= threshold``. A figure these images cannot give (one class absent, no threshold) is
    None."""
    referable = _tensor(grades, torch.long) >= cut
    p = referable_probability(probs, cut)
    positives, negatives = int(referable.sum()), int((~referable).sum())
    auroc = float(binary_auroc(p, referable.long())) if positives and negatives else None
    sensitivity = specificity = None
    if threshold is not None:
        refer = p >= threshold
        if positives:
            sensitivity = float((refer & referable).sum()) / positives
        if negatives:
            specificity = float((~refer & ~referable).sum()) / negatives
    return {
        "auroc": auroc,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "threshold": threshold,
    }


def calibration(grades, probs) -> dict[str, float]:
    """ECE of the top-grade probability (15 bins), multi-class Brier score and NLL."""
    probs = _tensor(probs)
    grades = _tensor(grades, torch.long)
    ece = multiclass_calibration_error(
        probs, grades, num_classes=probs.shape[1], n_bins=ECE_BINS, norm="l1"
    )
    onehot = torch.nn.functional.one_hot(grades, probs.shape[1]).to(probs.dtype)
    brier = ((probs - onehot) ** 2).sum(1).mean()
    taken = probs.gather(1, grades[:, None]).squeeze(1)
    nll = -torch.log(taken.clamp_min(torch.finfo(probs.dtype).tiny)).mean()
    return {"ece": float(ece), "brier": float(brier), "nll": float(nll)}


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe: a figure that cannot be given is null, never NaN."""
    return None if value is None or not math.isfinite(value) else float(value)

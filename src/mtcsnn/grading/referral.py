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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_roc,
    multiclass_calibration_error,
)

from mtcsnn.errors import ConfigError, check_choice

ECE_BINS = 15


RULES = ("sensitivity", "youden")


def check_cuts(cuts: object) -> None:
    """Referable cuts: grades 1..4, the first is "referable" (``test.referable``)."""
    if not (
        isinstance(cuts, Sequence)
        and not isinstance(cuts, str)
        and len(cuts) > 0
        and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 4 for c in cuts)
        and len(set(cuts)) == len(cuts)
    ):
        raise ConfigError(
            "referable_cuts", cuts, "a list of distinct grades 1-4, e.g. [2, 3] (grade >= 2 first)"
        )


def check_rule(rule: object) -> None:
    check_choice("threshold_rule", rule, RULES)


def check_target_sensitivity(target: object) -> None:
    if not (
        isinstance(target, (int, float))
        and not isinstance(target, bool)
        and math.isfinite(target)
        and 0 < target <= 1
    ):
        raise ConfigError("target_sensitivity", target, "a number in (0, 1], e.g. 0.87")


@dataclass(frozen=True)
class ReferralSettings:
    """Which cuts make a referral and how val chooses each threshold: ``youden`` (max
    sensitivity + specificity - 1) or ``sensitivity`` (the highest threshold whose val
    sensitivity reaches ``target_sensitivity``: the most specific that refers enough)."""

    referable_cuts: tuple[int, ...] = (2, 3)
    threshold_rule: str = "sensitivity"
    target_sensitivity: float = 0.87

    def __post_init__(self) -> None:
        check_cuts(list(self.referable_cuts))
        check_rule(self.threshold_rule)
        check_target_sensitivity(self.target_sensitivity)

    @staticmethod
    def key(index: int, cut: int) -> str:
        """``referable`` for the first cut, ``referable_<cut>`` for the others."""
        return "referable" if index == 0 else f"referable_{cut}"


def _tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def referable_probability(probs, cut: int) -> torch.Tensor:
    """P(grade >= cut) of each image: the sum of those grades' probabilities."""
    probs = _tensor(probs)
    if not 1 <= cut < probs.shape[1]:
        raise ConfigError("referable_cuts", cut, f"use grades 1..{probs.shape[1] - 1}")
    return probs[:, cut:].sum(1)


def _both_classes(referable: torch.Tensor) -> bool:
    return bool(referable.any()) and not bool(referable.all())


def choose_threshold(grades, probs, cut: int, settings: ReferralSettings) -> float | None:
    """The referral threshold ``settings`` choose on these (val) images; None when they do not
    hold both referable and non-referable images (no threshold can be chosen on them)."""
    referable = _tensor(grades, torch.long) >= cut
    if not _both_classes(referable):
        return None
    p = referable_probability(probs, cut)
    fpr, tpr, thresholds = binary_roc(p, referable.long())
    if settings.threshold_rule == "youden":
        best = int(torch.argmax(tpr - fpr))
    else:  # thresholds fall as tpr rises: the first that reaches the target is the highest
        best = int(torch.nonzero(tpr >= settings.target_sensitivity - 1e-12)[0])
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


# at most this many cuts are read from a checkpoint (grades 1..C-1 of a model of <= 64 grades)
MAX_RECORDED_CUTS = 63
# where a checkpoint keeps them
REFERRAL_KEY = "mtcsnn_referral"


def recorded_thresholds(val: dict) -> list[dict[str, float | int]]:
    """The referral thresholds val chose (``metrics.json``'s ``val``), as a checkpoint keeps
    them: ``[{"cut": 2, "threshold": 0.31}, ...]``, the first cut first."""
    found = [v for v in val.values() if isinstance(v, dict) and "cut" in v]
    return [
        {"cut": int(v["cut"]), "threshold": float(v["threshold"])}
        for v in found
        if v.get("threshold") is not None
    ]


def parse_thresholds(value: object, num_grades: int) -> tuple[tuple[int, float], ...]:
    """Thresholds read back from a file (a checkpoint from anyone): a list of
    ``{"cut": int, "threshold": float}`` with cuts of this model's grades and thresholds in
    [0, 1]; anything else is a ValueError that says what is wrong."""
    if not isinstance(value, list) or len(value) > MAX_RECORDED_CUTS:
        raise ValueError("its referral thresholds are not a short list")
    parsed = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"cut", "threshold"}:
            raise ValueError("a referral threshold is not {cut, threshold}")
        cut, threshold = entry["cut"], entry["threshold"]
        if not (isinstance(cut, int) and not isinstance(cut, bool) and 1 <= cut < num_grades):
            raise ValueError(f"a referral cut is not a grade 1..{num_grades - 1}")
        if not (isinstance(threshold, float) and math.isfinite(threshold) and 0 <= threshold <= 1):
            raise ValueError("a referral threshold is not a number in [0, 1]")
        parsed.append((cut, threshold))
    return tuple(parsed)


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe: a figure that cannot be given is null, never NaN."""
    return None if value is None or not math.isfinite(value) else float(value)


def screening_metrics(
    val: tuple, test: tuple | None, settings: ReferralSettings
) -> tuple[dict, dict | None]:
    """The figures a screening study reports, for ``val`` and ``test`` (grades, probabilities):
    each cut's referable metrics at the threshold chosen on val, and calibration.

    Returns what goes beside the grade metrics of ``metrics.json``'s ``val`` and ``test``.
    """
    num_grades = np.asarray(val[1]).shape[1]
    out_val: dict = dict(calibration(*val))
    out_test: dict | None = dict(calibration(*test)) if test is not None else None
    for index, cut in enumerate(settings.referable_cuts):
        if cut >= num_grades:
            continue  # a model of fewer grades has no such cut
        threshold = choose_threshold(*val, cut, settings)
        key = settings.key(index, cut)
        out_val[key] = {"cut": cut, **referable_metrics(*val, cut, threshold)}
        if out_test is not None:
            out_test[key] = {"cut": cut, **referable_metrics(*test, cut, threshold)}
    return out_val, out_test

"""What a screening programme asks of a grader: refer or not, and how far to trust the answer.

Referable DR is "more than mild": grade >= 2 (the cut the IDx-DR trial and Gulshan et al.
report); grade >= 3 is the usual second row. A model's probability of a referable image is the
sum of its probabilities of those grades. The threshold that turns it into a referral is
chosen on val, by a rule (a target sensitivity, or Youden's J), and applied to test unchanged.

Calibration (:mod:`mtcsnn.grading.calibration`) is reported beside it.

Pure functions of grades and probabilities (NumPy or torch in, floats out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_roc,
)

from mtcsnn.errors import ConfigError, check_choice
from mtcsnn.grading.calibration import calibration, fit_temperature, scaled

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


def referral_settings(grading: Mapping | None) -> ReferralSettings:
    """The settings of a config's ``grading`` section (a command's, or a run's
    ``metrics.json``); the defaults for a section or key it lacks (a run of an older version).
    A value that is not allowed is a ConfigError."""
    if grading is not None and not isinstance(grading, Mapping):
        raise ConfigError("grading", grading, "it must be a section of settings")
    fields = ("referable_cuts", "threshold_rule", "target_sensitivity")
    given = {k: grading[k] for k in fields if grading and k in grading}
    if "referable_cuts" in given:
        check_cuts(given["referable_cuts"])
        given["referable_cuts"] = tuple(given["referable_cuts"])
    return ReferralSettings(**given)


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


# at most this many cuts are read from a checkpoint (grades 1..C-1 of a model of <= 64 grades)
MAX_RECORDED_CUTS = 63
# where a checkpoint keeps them
REFERRAL_KEY = "mtcsnn_referral"
TEMPERATURE_KEY = "mtcsnn_temperature"


def recorded_thresholds(val: dict) -> list[dict[str, float | int]]:
    """The referral thresholds val chose (``metrics.json``'s ``val``), as a checkpoint keeps
    them: ``[{"cut": 2, "threshold": 0.31, "scaled_threshold": 0.35}, ...]``, the first cut
    first (``scaled_threshold``: on the temperature-scaled probabilities)."""
    scaled_val = val.get("temperature_scaled") or {}
    kept = []
    for key, v in val.items():
        if not (isinstance(v, dict) and "cut" in v and v.get("threshold") is not None):
            continue
        entry = {"cut": int(v["cut"]), "threshold": float(v["threshold"])}
        scaled_threshold = (scaled_val.get(key) or {}).get("threshold")
        if scaled_threshold is not None:
            entry["scaled_threshold"] = float(scaled_threshold)
        kept.append(entry)
    return kept


def chosen_on_val(val: dict) -> dict[str, object]:
    """What a checkpoint keeps of its val pass for ``predict``: the referral thresholds and the
    temperature that calibrates its probabilities."""
    kept: dict[str, object] = {REFERRAL_KEY: recorded_thresholds(val)}
    scaled_figures = val.get("temperature_scaled")
    if isinstance(scaled_figures, dict):
        kept[TEMPERATURE_KEY] = float(scaled_figures["temperature"])
    return kept


@dataclass(frozen=True)
class Referral:
    """A recorded referral rule: refer when P(grade >= cut) reaches ``threshold`` (or
    ``scaled_threshold``, on the temperature-scaled probabilities; None if not recorded)."""

    cut: int
    threshold: float
    scaled_threshold: float | None = None


def _probability(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0 <= value <= 1


def parse_thresholds(value: object, num_grades: int) -> tuple[Referral, ...]:
    """Thresholds read back from a file (a checkpoint from anyone): a list of
    ``{"cut": int, "threshold": float[, "scaled_threshold": float]}`` with cuts of this
    model's grades and thresholds in [0, 1]; anything else is a ValueError saying what."""
    if not isinstance(value, list) or len(value) > MAX_RECORDED_CUTS:
        raise ValueError("its referral thresholds are not a short list")
    parsed = []
    for entry in value:
        if not (
            isinstance(entry, dict)
            and {"cut", "threshold"} <= set(entry) <= {"cut", "threshold", "scaled_threshold"}
        ):
            raise ValueError("a referral threshold is not {cut, threshold[, scaled_threshold]}")
        cut = entry["cut"]
        if not (isinstance(cut, int) and not isinstance(cut, bool) and 1 <= cut < num_grades):
            raise ValueError(f"a referral cut is not a grade 1..{num_grades - 1}")
        scaled_threshold = entry.get("scaled_threshold")
        if not _probability(entry["threshold"]) or not (
            scaled_threshold is None or _probability(scaled_threshold)
        ):
            raise ValueError("a referral threshold is not a number in [0, 1]")
        parsed.append(Referral(cut, entry["threshold"], scaled_threshold))
    return tuple(parsed)


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe: a figure that cannot be given is null, never NaN."""
    return None if value is None or not math.isfinite(value) else float(value)


def screening_metrics(
    val: tuple, test: tuple | None, settings: ReferralSettings
) -> tuple[dict, dict | None]:
    """The figures a screening study reports, for ``val`` and ``test`` (grades, probabilities):
    each cut's referable metrics at the threshold chosen on val, calibration, and calibration
    after temperature scaling fitted on val (``temperature_scaled``).

    Returns what goes beside the grade metrics of ``metrics.json``'s ``val`` and ``test``.
    """
    num_grades = np.asarray(val[1]).shape[1]
    temperature = fit_temperature(*val)
    out_val: dict = dict(calibration(*val))
    out_val["temperature_scaled"] = {
        "temperature": temperature,
        **calibration(val[0], scaled(val[1], temperature)),
    }
    out_test: dict | None = None
    scaled_out: dict | None = None
    if test is not None:
        out_test = dict(calibration(*test))
        scaled_out = {
            "temperature": temperature,
            **calibration(test[0], scaled(test[1], temperature)),
        }
        out_test["temperature_scaled"] = scaled_out
    scaled_val = (val[0], scaled(val[1], temperature))
    scaled_test = (test[0], scaled(test[1], temperature)) if test is not None else None
    for index, cut in enumerate(settings.referable_cuts):
        if cut >= num_grades:
            continue  # a model of fewer grades has no such cut
        key = settings.key(index, cut)
        # the scaled probabilities get their own threshold: P(grade >= cut) does not keep its
        # order between images when the temperature changes
        for v, t, into_val, into_test in (
            (val, test, out_val, out_test),
            (scaled_val, scaled_test, out_val["temperature_scaled"], scaled_out),
        ):
            threshold = choose_threshold(*v, cut, settings)
            into_val[key] = {"cut": cut, **referable_metrics(*v, cut, threshold)}
            if t is not None and into_test is not None:
                into_test[key] = {"cut": cut, **referable_metrics(*t, cut, threshold)}
    return out_val, out_test

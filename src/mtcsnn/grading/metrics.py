"""Grade metrics (torchmetrics) and their conversion to plain numbers."""

from __future__ import annotations

import logging
import warnings

import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassRecall,
)

from mtcsnn.grading.comparison import absent_grades_message

log = logging.getLogger(__name__)


class GradeMAE(MeanAbsoluteError):
    """Mean absolute error of the predicted grade (argmax of the class probabilities)."""

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(probs.argmax(-1).float(), target.float())


class WithinOneAccuracy(MeanMetric):
    """Share of images whose predicted grade is within one grade of the truth."""

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update((probs.argmax(-1) - target).abs().le(1).float())


class PresentGradesAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the grades present in the data (scikit-learn's and
    MedMNIST's mean when every grade is there).

    A grade without images has no AUROC. torchmetrics' macro average counts it as 0 (four
    grades of 0.5 and an absent one give 0.40); here it is left out of the mean and listed in
    ``absent`` after :meth:`compute`. With fewer than two grades present AUROC is undefined:
    NaN, never 0.
    """

    def __init__(self, num_classes: int, **kwargs: object) -> None:
        super().__init__(num_classes, average=None, **kwargs)  # type: ignore[arg-type]
        # images per grade, summed over processes like the other states
        self.add_state(
            "grade_counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.absent: tuple[int, ...] = ()
        self.told: set[tuple[int, ...]] = set()  # absent sets already warned about

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(preds, target)
        # not bincount, which has no deterministic CUDA kernel (trainer.deterministic=true)
        grades = torch.arange(self.num_classes, device=target.device)
        self.grade_counts += (target.reshape(-1, 1) == grades).sum(0)

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        present = self.grade_counts > 0
        self.absent = tuple(int(c) for c in (~present).nonzero().flatten())
        if int(present.sum()) < 2:
            return torch.tensor(float("nan"), device=self.grade_counts.device)
        with warnings.catch_warnings():
            # torchmetrics' own "no positive samples" warnings: the absent grades, said once
            # by warn_absent_grades
            warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
            per_grade = super().compute()
        return per_grade[present].mean()


def warn_absent_grades(metrics: MetricCollection, split: str) -> None:
    """One warning line naming the grades absent from ``split`` in the last ``compute()`` of
    ``metrics``' AUROC; once per set of absent grades, not every epoch."""
    auroc = metrics["auroc"]
    if not isinstance(auroc, PresentGradesAUROC) or auroc.absent in auroc.told:
        return
    auroc.told.add(auroc.absent)
    message = absent_grades_message(split, auroc.absent, auroc.num_classes)
    if message:
        log.warning("%s", message)


def warn_once_together(collections: list[MetricCollection]) -> None:
    """Metrics of the same images (an ensemble's members): grades absent there are named once."""
    told: set[tuple[int, ...]] = set()
    for metrics in collections:
        auroc = metrics["auroc"]
        if isinstance(auroc, PresentGradesAUROC):
            auroc.told = told


def grade_metrics(num_classes: int = 5) -> MetricCollection:
    """Metrics over ``(probs N x C, grades N)``.

    ``auroc`` is the macro mean of one-vs-rest AUROCs on the class probabilities over the
    grades present (:class:`PresentGradesAUROC`), as the MedMNIST Evaluator computes it when
    every grade is there; ``kappa`` is quadratic weighted Cohen's kappa;
    ``acc_within1`` is the off-by-one accuracy.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "auroc": PresentGradesAUROC(num_classes),
            "kappa": MulticlassCohenKappa(num_classes, weights="quadratic"),
            "mae": GradeMAE(),
            "acc_within1": WithinOneAccuracy(),
            "recall": MulticlassRecall(num_classes, average=None),
            "confusion": MulticlassConfusionMatrix(num_classes),
        },
        compute_groups=False,
    )


def scalar_metrics(values: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """Loggable scalars: per-class recall becomes ``recall_0`` ...; no confusion matrix."""
    out = {}
    for name, value in values.items():
        if name == "confusion":
            continue
        if value.ndim == 0:
            out[f"{prefix}{name}"] = float(value)
        else:
            out.update({f"{prefix}{name}_{i}": float(v) for i, v in enumerate(value)})
    return out

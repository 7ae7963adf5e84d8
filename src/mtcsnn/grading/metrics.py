"""Grade metrics (torchmetrics) and their conversion to plain numbers."""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassRecall,
)


class GradeMAE(MeanAbsoluteError):
    """Mean absolute error of the predicted grade (argmax of the class probabilities)."""

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(probs.argmax(-1).float(), target.float())


class WithinOneAccuracy(MeanMetric):
    """Share of images whose predicted grade is within one grade of the truth."""

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update((probs.argmax(-1) - target).abs().le(1).float())


def grade_metrics(num_classes: int = 5) -> MetricCollection:
    """Metrics over ``(probs N x C, grades N)``.

    ``auroc`` is the macro mean of one-vs-rest AUROCs on the class probabilities, as the
    MedMNIST Evaluator computes it; ``kappa`` is quadratic weighted Cohen's kappa;
    ``acc_within1`` is the off-by-one accuracy.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
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

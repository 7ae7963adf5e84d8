"""Ordinal baselines on the same backbone: CORAL, CORN (from ``coral-pytorch``) and regression.

Each is a pair loss like the others (both images of a pair are classified, no pair term), and
says which classifier it needs (``make_classifier``) and how its outputs become the 5 class
probabilities the metrics use (``probabilities``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from coral_pytorch.dataset import levels_from_labelbatch
from coral_pytorch.layers import CoralLayer
from coral_pytorch.losses import coral_loss, corn_loss
from torch import nn

from mtcsnn.errors import ConfigError
from mtcsnn.losses.base import BranchOutput, ProbabilityHeadLoss, check_num_classes
from mtcsnn.losses.probabilities import (
    coral_probabilities,
    corn_probabilities,
    score_probabilities,
)


class CoralLoss(ProbabilityHeadLoss):
    """CORAL (Cao, Mirjalili & Raschka 2020): K-1 binary tasks ``grade > k`` that share one weight
    vector and differ by their biases, which keeps the cumulative probabilities ordered."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        check_num_classes(num_classes)
        self.num_classes = num_classes

    def make_classifier(self, num_features: int) -> nn.Module:
        return CoralLayer(num_features, self.num_classes)

    def probabilities(self, out: BranchOutput) -> torch.Tensor:
        return coral_probabilities(out.logits)

    def _one(self, logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        levels = levels_from_labelbatch(grades, self.num_classes).to(logits.device, logits.dtype)
        return coral_loss(logits, levels)

    def forward(self, out_a: BranchOutput, out_b: BranchOutput, grade_a, grade_b):
        coral_a, coral_b = self._one(out_a.logits, grade_a), self._one(out_b.logits, grade_b)
        return {"loss": coral_a + coral_b, "coral_a": coral_a, "coral_b": coral_b}


class CornLoss(ProbabilityHeadLoss):
    """CORN (Shi, Cao & Raschka 2023): K-1 conditional binary tasks ``grade > k | grade > k-1``,
    each trained on the images that reach it; chained, they give ordered probabilities."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        check_num_classes(num_classes)
        self.num_classes = num_classes

    def make_classifier(self, num_features: int) -> nn.Module:
        return nn.Linear(num_features, self.num_classes - 1)

    def probabilities(self, out: BranchOutput) -> torch.Tensor:
        return corn_probabilities(out.logits)

    def forward(self, out_a: BranchOutput, out_b: BranchOutput, grade_a, grade_b):
        corn_a = corn_loss(out_a.logits, grade_a, self.num_classes)
        corn_b = corn_loss(out_b.logits, grade_b, self.num_classes)
        return {"loss": corn_a + corn_b, "corn_a": corn_a, "corn_b": corn_b}


def check_width(width: object) -> None:
    """The width of the Gaussian around the regressed grade: a finite number > 0."""
    number = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not (number and math.isfinite(width) and width > 0):  # type: ignore[arg-type]
        raise ConfigError("width", width, "it must be a finite number > 0 (in grades)")


class GradeRegressionLoss(ProbabilityHeadLoss):
    """Plain regression of the grade by the severity-score head (MSE); predicted grade = the
    rounded score. Probabilities: :func:`mtcsnn.losses.probabilities.score_probabilities`."""

    trains_score = True
    difference = "signed"  # the score is the grade itself, so its differences keep their sign

    def __init__(self, num_classes: int = 5, width: float = 0.5) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_width(width)
        self.num_classes, self.width = num_classes, width

    def probabilities(self, out: BranchOutput) -> torch.Tensor:
        return score_probabilities(out.score.float(), self.num_classes, self.width)

    def forward(self, out_a: BranchOutput, out_b: BranchOutput, grade_a, grade_b):
        mse_a = F.mse_loss(out_a.score, grade_a.to(out_a.score.dtype))
        mse_b = F.mse_loss(out_b.score, grade_b.to(out_b.score.dtype))
        return {"loss": mse_a + mse_b, "mse_a": mse_a, "mse_b": mse_b}

"""What the model asks of a loss: the declared interface every pair loss implements.

A loss sees the two branches' outputs of a pair and their grades, and returns its terms (the
key ``loss`` is optimised, the others are logged). It also says which classifier it needs, how
its outputs become the 5 class probabilities the metrics use, and whether it trains the
severity score; the defaults below fit a plain softmax classifier.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from mtcsnn.errors import ConfigError, check_choice, check_optional_share

DIFFERENCES = ("absolute", "signed")
# the diabetic retinopathy scale every head, metric and output of this project is built for
NUM_GRADES = 5


class BranchOutput(NamedTuple):
    """What one Siamese branch gives the loss."""

    logits: torch.Tensor  # (N, num_classes), or (N, num_classes - 1) for ordinal heads
    score: torch.Tensor  # (N,) severity score


class PairLoss(nn.Module):
    """Base class of the pair losses; subclasses implement :meth:`forward`."""

    #: whether the severity-score head learns anything (then it is also decoded into grades)
    trains_score: bool = False
    #: how score differences are compared with grade differences: ``absolute`` or ``signed``
    difference: str = "absolute"

    def make_classifier(self, num_features: int) -> nn.Module | None:
        """A classifier to replace the network's K-way linear one; None keeps that one."""
        return None

    def probabilities(self, out: BranchOutput) -> torch.Tensor:
        """The class probabilities (N, K) of a branch output: a softmax of the logits."""
        return out.logits.float().softmax(-1)

    def class_scores(self, out: BranchOutput) -> torch.Tensor:
        """Per-class scores to explain (Grad-CAM): the logits of a softmax classifier."""
        return out.logits

    def forward(
        self, out_a: BranchOutput, out_b: BranchOutput, grade_a: torch.Tensor, grade_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ProbabilityHeadLoss(PairLoss):
    """A loss whose head is not a softmax: Grad-CAM explains its log-probabilities."""

    def class_scores(self, out: BranchOutput) -> torch.Tensor:
        return self.probabilities(out).clamp_min(1e-12).log()


def check_lam(lam: object) -> None:
    """``lam`` weighs the score-difference term: a finite number >= 0."""
    if not (
        isinstance(lam, (int, float))
        and not isinstance(lam, bool)
        and math.isfinite(lam)
        and lam >= 0
    ):
        raise ConfigError("lam", lam, "it must be a finite number >= 0")


def check_difference(difference: object) -> None:
    check_choice("difference", difference, DIFFERENCES)


def check_label_smoothing(value: object) -> None:
    check_optional_share("label_smoothing", value)


def check_num_classes(value: object) -> None:
    """The number of grades: 5 (0-4), the scale every output, metric and CSV column follows."""
    if isinstance(value, bool) or not isinstance(value, int) or value != NUM_GRADES:
        raise ConfigError(
            "num_classes",
            value,
            f"mtcsnn grades diabetic retinopathy on the {NUM_GRADES}-grade scale (0-4): "
            f"it must be {NUM_GRADES}",
        )

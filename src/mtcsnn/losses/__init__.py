"""Pair losses: MTCSNN's multi-task loss, the CE baseline and ordinal baselines.

Every loss is a :class:`~mtcsnn.losses.base.PairLoss`; a new one is a subclass here plus a
yaml in ``conf/loss``.
"""

from mtcsnn.losses.base import DIFFERENCES, BranchOutput, PairLoss, ProbabilityHeadLoss
from mtcsnn.losses.multitask import (
    MultiTaskLoss,
    PairCrossEntropyLoss,
    pair_cross_entropy,
    score_difference_mse,
)
from mtcsnn.losses.ordinal import CoralLoss, CornLoss, GradeRegressionLoss

__all__ = [
    "BranchOutput",
    "CoralLoss",
    "CornLoss",
    "DIFFERENCES",
    "GradeRegressionLoss",
    "MultiTaskLoss",
    "PairCrossEntropyLoss",
    "PairLoss",
    "ProbabilityHeadLoss",
    "pair_cross_entropy",
    "score_difference_mse",
]

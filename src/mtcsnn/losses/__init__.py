from mtcsnn.losses.multitask import (
    DIFFERENCES,
    MultiTaskLoss,
    PairCrossEntropyLoss,
    pair_cross_entropy,
    score_difference_mse,
)
from mtcsnn.losses.ordinal import CoralLoss, CornLoss, GradeRegressionLoss

__all__ = [
    "CoralLoss",
    "CornLoss",
    "DIFFERENCES",
    "GradeRegressionLoss",
    "MultiTaskLoss",
    "PairCrossEntropyLoss",
    "pair_cross_entropy",
    "score_difference_mse",
]

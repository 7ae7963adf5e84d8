from mtcsnn.losses.multitask import (
    DIFFERENCES,
    MultiTaskLoss,
    PairCrossEntropyLoss,
    pair_cross_entropy,
    score_difference_mse,
)

__all__ = [
    "DIFFERENCES",
    "MultiTaskLoss",
    "PairCrossEntropyLoss",
    "pair_cross_entropy",
    "score_difference_mse",
]

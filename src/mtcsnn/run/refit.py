"""A refit (``refit_from=<a cross-validation sweep>``): one model trained on every pooled train
and val image, for the number of epochs the sweep's folds chose, as scikit-learn's search
refits its best estimator on all the data.

The refit trains under the same settings and schedule as the folds (a 100-epoch schedule stays
one) and stops after the median of the folds' best-val epochs, over every seed of its
configuration in the sweep. Nothing is left to validate on, so it never validates: its val
figures, the temperature and the referral thresholds are its seed's out-of-fold predictions
(each pooled image predicted by the fold model that did not train on it), which
:func:`mtcsnn.reporting.refit.refit_plan` reads from the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, open_dict

from mtcsnn.data.folds import ALL


@dataclass(frozen=True)
class Refit:
    """What a refit takes from its cross-validation sweep."""

    sweep: str  # the sweep's folder
    folds: int
    fold_seed: int
    fold_epochs: tuple[int, ...]  # the best-val epoch of every fold of every seed, from 1
    # this seed's out-of-fold predictions, in pool order: grades, probabilities (N x grades)
    grades: np.ndarray
    probs: np.ndarray

    @property
    def epochs(self) -> int:
        """The epochs the refit trains: the folds' median (a half rounded up)."""
        return int(np.floor(np.median(self.fold_epochs) + 0.5))

    def record(self) -> dict:
        """What ``metrics.json`` says of it."""
        return {
            "from": self.sweep,
            "folds": self.folds,
            "fold_seed": self.fold_seed,
            "epochs": self.epochs,
            "fold_epochs": list(self.fold_epochs),
            "val": "out-of-fold predictions of the sweep's folds of this seed",
        }


def refit_config(cfg: DictConfig, refit: Refit) -> None:
    """``cfg`` as the refit trains: every fold of the sweep's pool trains, and no callback
    waits for a val metric (the checkpoint is the last epoch's; early stopping is off)."""
    with open_dict(cfg):
        cfg.data.folds, cfg.data.fold, cfg.data.fold_seed = refit.folds, ALL, refit.fold_seed
        callbacks = cfg.get("callbacks") or {}
        if callbacks.get("model_checkpoint"):
            callbacks.model_checkpoint.monitor = None
        if "early_stopping" in callbacks:
            callbacks.early_stopping = None

"""K-fold cross-validation over the pooled train and val images; test is never part of it.

The pool is the train split's images, then the val split's, in file order (RetinaMNIST's
``.npz``; a fundus folder's CSV rows of each split). Fold ``k`` of ``K`` is the val split, the
other ``K - 1`` folds the training split; fold ``all`` (:data:`ALL`, a refit) trains on the
whole pool. Folds are drawn by scikit-learn's
``StratifiedKFold`` (each grade's share of every fold close to its share of the pool), from
``fold_seed``, so the same settings give the same folds on every machine.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedKFold

from mtcsnn.errors import ConfigError, DataError

# data.fold of a refit: every fold trains (``refit_from=<a CV sweep>``, mtcsnn.run.refit)
ALL = "all"


def check_folds(folds: object, fold: object) -> None:
    """``folds``: None (the official split) or a whole number >= 2; ``fold``: 0 .. folds-1, or
    ``all`` (every fold trains: a refit)."""
    if folds is None:
        return
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(
            "folds", folds, "it must be null (the official split) or a whole number >= 2"
        )
    if fold == ALL:
        return
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
        raise ConfigError(
            "fold", fold, f"with data.folds={folds} it must be 0 .. {folds - 1} or {ALL}"
        )


def fold_split(
    grades: np.ndarray, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)``: positions in the pool of fold ``fold``'s training and val images.

    Every image of the pool is in exactly one fold's val; the positions come sorted.
    """
    check_folds(folds, fold)
    grades = np.asarray(grades).reshape(-1)
    if len(grades) < folds:
        raise DataError(
            f"data.folds={folds}: the train and val splits hold {len(grades)} images together, "
            f"fewer than the {folds} folds"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a grade with fewer images than folds is spread as far as it goes; check_scorable
        # says so when a fold's val can no longer be scored
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        train, val = list(splitter.split(np.zeros(len(grades)), grades))[fold]
    return np.sort(train), np.sort(val)

"""A run's predictions files read back and checked: ``test_predictions.csv`` and
``val_predictions.csv`` (untrusted: bounded, every row checked), and the held-out val AUROC
of the latter.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mtcsnn.data.untrusted import (
    MAX_TABLE_BYTES,
    read_text,
)
from mtcsnn.grading.selection import held_out_auroc

# how far from 1 a row's probabilities may sum: written with 7 or 9 significant digits they
# are within 1e-6, and CORAL's differences of cumulative probabilities, clamped at 0, within a
# little more; a file of logits, scores or shifted columns is far off
SUM_TOLERANCE = 0.01


class PredictionsError(ValueError):
    """A predictions file that cannot be used as it is: why, with the line."""


def _prob_rows(path: Path) -> tuple[list[dict[str, str]], list[int]]:
    """The rows of a predictions file (read only if it is a regular file of bounded size)
    and the classes of its ``prob_<c>`` columns, which must be ``prob_0`` .. ``prob_<C-1>``."""
    text = read_text(path, MAX_TABLE_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    probs = [c for c in columns if c.startswith("prob_")]
    wanted = [f"prob_{c}" for c in range(len(probs))]
    if not probs:
        raise PredictionsError("no prob_ columns")
    if sorted(probs, key=lambda c: (len(c), c)) != wanted or len(set(probs)) != len(probs):
        raise PredictionsError(f"probability columns {probs}, expected {wanted}")
    for column in ("index", "grade"):
        if column not in columns:
            raise PredictionsError(f"no {column} column")
    rows = list(reader)
    if not rows:
        raise PredictionsError("no rows")
    return rows, list(range(len(probs)))


def _whole(row: dict[str, str], column: str, line: int) -> int:
    value = row.get(column) or ""
    try:
        return int(value)
    except ValueError:
        raise PredictionsError(f"line {line}: {column} {value!r} is not a whole number") from None


def _row(row: dict[str, str], classes: list[int], line: int) -> tuple[int, int, list[float]]:
    """index, grade and probabilities of one row: a grade of the model's, finite probabilities
    from 0 to 1 that sum to 1; else a PredictionsError naming the line."""
    index, grade = _whole(row, "index", line), _whole(row, "grade", line)
    if index < 0:
        raise PredictionsError(f"line {line}: index {index} is negative")
    if not 0 <= grade < len(classes):
        raise PredictionsError(f"line {line}: grade {grade} is not one of 0..{len(classes) - 1}")
    probs = []
    for c in classes:
        text = row.get(f"prob_{c}") or ""
        try:
            value = float(text)
        except ValueError:
            raise PredictionsError(f"line {line}: prob_{c} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise PredictionsError(f"line {line}: prob_{c} is {value}, not a finite probability")
        if not 0 <= value <= 1:
            raise PredictionsError(f"line {line}: prob_{c} is {value}, not from 0 to 1")
        probs.append(value)
    if abs(sum(probs) - 1) > SUM_TOLERANCE:
        raise PredictionsError(f"line {line}: the probabilities sum to {sum(probs):.6g}, not 1")
    return index, grade, probs


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``test_predictions.csv``: grades (n,) and probabilities (n, C), in index order.

    The file comes from a run folder, maybe someone else's: anything but one row for each
    index 0..n-1 (none twice, none missing: rows shifted or lost would pair other images),
    grades of the model and finite probabilities that sum to 1 is a ValueError
    (:class:`PredictionsError`) naming the first line at fault.
    """
    rows, classes = _prob_rows(path)
    by_index: dict[int, tuple[int, list[float]]] = {}
    lines: dict[int, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        index, grade, probs = _row(row, classes, line)
        if index in by_index:
            raise PredictionsError(f"index {index} appears twice (lines {lines[index]}, {line})")
        by_index[index], lines[index] = (grade, probs), line
    n = len(by_index)
    if max(by_index) != n - 1:
        missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
        raise PredictionsError(
            f"rows missing or shifted: {n} rows, indices {min(by_index)}..{max(by_index)} "
            f"(index {missing[0]} missing), expected 0..{n - 1}"
        )
    grades = np.array([by_index[i][0] for i in range(n)])
    probs = np.array([by_index[i][1] for i in range(n)], dtype=np.float64)
    return grades, probs


def read_val_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``val_predictions.csv``: val grades (n,) and every epoch's probabilities (epochs, n, C).

    The file comes from a run folder, maybe someone else's: anything but the same images with
    the same grades in every epoch, each once, and finite probabilities that sum to 1 is a
    ValueError.
    """
    _, _, grades, probs = read_val_epochs(path)
    return grades, probs


def read_val_epochs(path: Path) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_val_predictions` with what it leaves out: the file's epochs (counted from
    0, as it counts them) and the images' ``index`` (n,), in the order of the rows returned."""
    rows, classes = _prob_rows(path)
    by_epoch: dict[int, dict[int, tuple[int, list[float]]]] = defaultdict(dict)
    for line, row in enumerate(rows, start=2):
        epoch = _whole(row, "epoch", line)
        index, grade, probs = _row(row, classes, line)
        if index in by_epoch[epoch]:
            raise PredictionsError(f"line {line}: index {index} appears twice in epoch {epoch}")
        by_epoch[epoch][index] = (grade, probs)
    epochs = sorted(by_epoch)
    images = sorted(by_epoch[epochs[0]])
    grades = np.array([by_epoch[epochs[0]][i][0] for i in images])
    probs = []
    for epoch in epochs:
        if sorted(by_epoch[epoch]) != images:
            raise ValueError(f"epoch {epoch} has other val images than epoch {epochs[0]}")
        if any(by_epoch[epoch][i][0] != g for i, g in zip(images, grades, strict=True)):
            raise ValueError(f"epoch {epoch} has other val grades than epoch {epochs[0]}")
        probs.append([by_epoch[epoch][i][1] for i in images])
    probs_array = np.array(probs)
    if not np.isfinite(probs_array).all():
        raise ValueError("a probability is not a finite number")
    return epochs, np.array(images), grades, probs_array


def _scores(rows: list[dict[str, str]]) -> np.ndarray | None:
    """The rows' ``score`` column as numbers; None if a row has none or one not finite."""
    try:
        scores = np.array([float(row.get("score") or "nan") for row in rows])
    except ValueError:
        return None
    return scores if np.isfinite(scores).all() else None


def read_test_scores(path: Path) -> np.ndarray | None:
    """The severity scores of ``test_predictions.csv`` in index order (the file already passed
    :func:`read_predictions`), or None where it has no usable score column."""
    rows, _ = _prob_rows(path)
    scores = _scores(rows)
    if scores is None:
        return None
    try:
        order = np.argsort([int(row["index"]) for row in rows], kind="stable")
    except (KeyError, ValueError):
        return None
    return scores[order]


def read_val_scores(path: Path, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Val grades and severity scores of one epoch of ``val_predictions.csv`` (counted from 0,
    as the file counts), in index order; None where the file has no score column or no such
    epoch. Read bounded; anything malformed is None too: the score margin is optional."""
    try:
        rows, _ = _prob_rows(path)
        chosen = [row for row in rows if _whole(row, "epoch", 0) == epoch]
        index = [_whole(row, "index", 0) for row in chosen]
        grades = np.array([_whole(row, "grade", 0) for row in chosen])
    except (PredictionsError, OSError, ValueError):
        return None
    scores = _scores(chosen)
    if scores is None or not chosen or len(set(index)) != len(index):
        return None
    order = np.argsort(index, kind="stable")
    return grades[order], scores[order]


def held_out_of(folder: Path, choose_by: str = "val/auroc") -> tuple[float | None, str | None]:
    """The run's held-out val AUROC (its epochs chosen by ``choose_by``, the run's
    ``optimized_metric``), or None and, where it kept a file, why it has none."""
    path = folder / "val_predictions.csv"
    if not path.exists():
        return None, None
    try:
        value = held_out_auroc(*read_val_predictions(path), choose_by=choose_by)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"val_predictions.csv unusable ({type(err).__name__}: {err})"
    if not np.isfinite(value):
        return None, "val_predictions.csv: a grade has too few val images to split in two"
    return value, None

"""Run folders read back: a run is a folder holding ``metrics.json`` and
``test_predictions.csv`` (what ``python -m mtcsnn.train`` writes); a folder that is not a usable
run is skipped with its reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mtcsnn.data.corruptions import CORRUPTIONS, SEVERITIES
from mtcsnn.data.untrusted import (
    MAX_RECORD_BYTES,
    MAX_TABLE_BYTES,
    UnreadableFile,
    file_problem,
    read_text,
)
from mtcsnn.reporting.predictions import (
    PredictionsError,
    held_out_of,
    read_predictions,
    read_test_scores,
    read_val_scores,
)
from mtcsnn.run.config import (
    current_names,
    flatten,
)
from mtcsnn.run.failures import FAILED, failure_reason
from mtcsnn.run.files import best_epoch_number

METRICS = ("auroc", "acc", "kappa", "mae")
# robustness.csv (corruptions=...): {(corruption, severity): {auroc, acc, kappa, referable_auroc}}
ROBUSTNESS_FIELDS = ("auroc", "acc", "kappa", "referable_auroc")
RobustnessTable = dict[tuple[str, int], dict[str, float]]
OPTIONAL_METRICS = {"acc_within1": "off-by-one accuracy"}


@dataclass
class Run:
    path: Path
    metrics: dict
    grades: np.ndarray
    probs: np.ndarray
    settings: dict = field(default_factory=dict)  # flattened choices and config
    # val AUROC of the epoch chosen on the other half of val (None: no val_predictions.csv)
    held_out_val_auroc: float | None = None
    held_out_problem: str | None = None  # why a kept val_predictions.csv gave no figure
    # settings keys the run's command line set (``.hydra/overrides.yaml``)
    overridden: frozenset[str] = frozenset()
    # its robustness.csv (None: not measured, or not readable as one)
    robustness: RobustnessTable | None = None
    # test severity scores, and the val grades and scores of the tested checkpoint's epoch
    # (None: not written, e.g. by runs from before val scores were kept)
    scores: np.ndarray | None = None
    val_scores: tuple[np.ndarray, np.ndarray] | None = None

    def overrode(self, key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in self.overridden)

    @property
    def seed(self) -> int:
        return int(self.metrics.get("seed", 0))

    @property
    def test_data(self) -> str:
        """What the run was tested on: the fingerprint training recorded, else its grades."""
        recorded = self.metrics.get("test_data")
        if isinstance(recorded, str):
            return recorded
        return "grades:" + self._grades_digest

    @property
    def _grades_digest(self) -> str:
        return hashlib.sha256(self.grades.astype(np.int64).tobytes()).hexdigest()

    @property
    def tested_on(self) -> tuple[str, str, int]:
        """Runs pair (seed pairs, pooled pairs, ensembles) only when this is equal: the same
        test data, the same grades row by row (so the same images, in the same order) and the
        same number of grades."""
        return self.test_data, self._grades_digest, self.probs.shape[1]


SEARCH_FOLDER = "a search: its trials are the runs"
UNTESTED_TRIAL = "search trial not tested (only the chosen trial sees the test split)"
DEBUG_RUN = "a debug run (debug=...): never mixed into results"


def _numbers(node: object, names: tuple[str, ...]) -> bool:
    return isinstance(node, dict) and all(
        isinstance(node.get(n), (int, float)) and not isinstance(node.get(n), bool) for n in names
    )


def shape_problem(metrics: object) -> str | None:
    """What keeps a parsed ``metrics.json`` from being a run's results, or None."""
    if not isinstance(metrics, dict):
        return f"a {type(metrics).__name__}, not an object"
    if not _numbers(metrics.get("test"), METRICS):
        return "no test metrics (" + ", ".join(METRICS) + ")"
    if not all(math.isfinite(metrics["test"][m]) for m in METRICS):
        return "a test metric is not a finite number"
    if "val" in metrics and metrics["val"] is not None and not isinstance(metrics["val"], dict):
        return "val is not an object"
    for stage in ("test", "val"):
        values = metrics.get(stage) or {}
        present = [m for m in (*METRICS, *OPTIONAL_METRICS) if m in values]
        if not _numbers(values, tuple(present)):
            return f"a {stage} metric is not a number"
    confusion = metrics.get("test_confusion")
    if not (
        isinstance(confusion, list)
        and all(isinstance(row, list) and all(isinstance(v, int) for v in row) for row in confusion)
    ):
        return "test_confusion is not a matrix of counts"
    if not isinstance(metrics.get("seed", 0), int):
        return "seed is not an integer"
    for key in ("config", "choices"):
        if not isinstance(metrics.get(key, {}), dict):
            return f"{key} is not an object"
    return None


def load_run(folder: Path) -> Run | str:
    """The run in ``folder``, or the reason it cannot be used.

    Every file is read only if it is a regular file of bounded size (a FIFO would block the
    report), and the test predictions are checked (:func:`read_predictions`).
    """
    metrics_path = folder / "metrics.json"
    failed_path = folder / FAILED
    if failed_path.exists() and not metrics_path.exists():
        problem = file_problem(failed_path, MAX_RECORD_BYTES)
        if problem is not None:
            return f"failed: {FAILED} not read ({problem})"
        return f"failed: {failure_reason(failed_path)}"
    if (folder / "search.json").exists():
        return SEARCH_FOLDER
    if not metrics_path.exists():
        return "unfinished: no metrics.json"
    try:
        metrics = json.loads(read_text(metrics_path, MAX_RECORD_BYTES))
    except UnreadableFile as err:
        return f"metrics.json not read ({err})"
    except (OSError, ValueError, RecursionError) as err:  # nesting too deep: RecursionError
        return f"unreadable ({type(err).__name__}: {err})"
    predictions_path = folder / "test_predictions.csv"
    if not predictions_path.exists():
        untested = isinstance(metrics, dict) and "test" in metrics and metrics["test"] is None
        return UNTESTED_TRIAL if untested else "missing test_predictions.csv"
    try:
        grades, probs = read_predictions(predictions_path)
    except UnreadableFile as err:
        return f"test_predictions.csv not read ({err})"
    except PredictionsError as err:
        return f"test_predictions.csv unusable: {err}"
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    problem = shape_problem(metrics) or fit_problem(metrics, probs.shape[1])
    if problem:
        return f"metrics.json of another shape: {problem}"
    if metrics.get("config", {}).get("task_name") == "debug":
        return DEBUG_RUN
    if "acc_within1" not in metrics["test"]:
        # runs from before the metric existed: the same number, from their own predictions
        within = float(np.mean(np.abs(probs.argmax(1) - grades) <= 1))
        metrics["test"] = {**metrics["test"], "acc_within1": within}
    settings = flatten({"choices": metrics.get("choices", {}), "config": metrics.get("config", {})})
    settings = current_names(settings, prefix="config.")  # a run of an earlier version too
    chosen_by = metrics.get("config", {}).get("optimized_metric")
    held_out = held_out_of(folder, chosen_by if isinstance(chosen_by, str) else "val/auroc")
    overridden = overridden_keys(folder, set(metrics.get("choices", {})))
    robustness = read_robustness(folder)
    run = Run(folder, metrics, grades, probs, settings, *held_out, overridden, robustness)
    run.scores, run.val_scores = _scores_of(folder, metrics)
    return run


def _scores_of(
    folder: Path, metrics: dict
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """Test scores and the val grades and scores of the tested epoch, where the run kept both."""
    epoch = best_epoch_number(metrics)
    val_path = folder / "val_predictions.csv"
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not val_path.exists():
        return None, None
    val = read_val_scores(val_path, epoch - 1)  # the file counts epochs from 0
    if val is None:
        return None, None
    return read_test_scores(folder / "test_predictions.csv"), val


def read_robustness(folder: Path) -> RobustnessTable | None:
    """``folder/robustness.csv`` as ``{(corruption, severity): figures}``; None when the run has
    none, or it is not the table ``corruptions=...`` writes (read bounded, checked strictly)."""
    path = folder / "robustness.csv"
    if not path.exists():
        return None
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path, MAX_TABLE_BYTES))))
    except (UnreadableFile, OSError, UnicodeDecodeError, csv.Error):
        return None
    table: RobustnessTable = {}
    for row in rows:
        try:
            key = (row["corruption"], int(row["severity"]))
            figures = {f: float(row[f]) for f in ROBUSTNESS_FIELDS}
        except (KeyError, TypeError, ValueError):
            return None
        known = key == ("none", 0) or (key[0] in CORRUPTIONS and key[1] in SEVERITIES)
        if not known or key in table or not all(math.isfinite(v) for v in figures.values()):
            return None
        table[key] = figures
    return table if ("none", 0) in table else None


def fit_problem(metrics: dict, num_classes: int) -> str | None:
    """What keeps a ``metrics.json`` from describing predictions of ``num_classes`` grades."""
    confusion = metrics["test_confusion"]
    if len(confusion) != num_classes or any(len(row) != num_classes for row in confusion):
        return f"test_confusion is not {num_classes} x {num_classes}, as the predictions' grades"
    model = metrics.get("config", {}).get("model")
    declared = model.get("num_classes") if isinstance(model, dict) else None
    if declared is not None and declared != num_classes:
        return f"model.num_classes is {declared!r}, the predictions have {num_classes} grades"
    return None


def overridden_keys(folder: Path, groups: set[str]) -> frozenset[str]:
    """The config values the run's command line set, as settings keys
    (``loss.label_smoothing=0.1`` -> ``config.loss.label_smoothing``), leaving out the choices of
    config ``groups`` (``loss=ce``); none where Hydra's ``overrides.yaml`` is missing or
    unreadable."""
    try:
        lines = yaml.safe_load(read_text(folder / ".hydra" / "overrides.yaml", MAX_RECORD_BYTES))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return frozenset()
    if not isinstance(lines, list):
        return frozenset()
    names = {line.split("=", 1)[0].lstrip("+~") for line in lines if isinstance(line, str)}
    return frozenset(f"config.{name}" for name in names - groups if name)


def run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) holding ``metrics.json`` or ``.hydra/``.

    Linked folders are followed, so a folder of links to runs kept elsewhere is a comparison;
    a folder reached twice (two links, or a link back up the tree) counts once.
    """
    found, seen = [], set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        folder = Path(current)
        if "metrics.json" in files or (folder / ".hydra" / "config.yaml").is_file():
            found.append(folder)
    return sorted(found)


def collect_runs(root: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every run under ``root`` (``root`` itself may be one), and the skipped folders with why."""
    runs, skipped = [], []
    for folder in run_folders(root):
        loaded = load_run(folder)
        if isinstance(loaded, Run):
            runs.append(loaded)
        elif loaded != SEARCH_FOLDER:
            skipped.append((folder, loaded))
    runs, disagreeing = agreeing_on_test_data(runs)
    skipped += disagreeing
    return runs, sorted(skipped)


def agreeing_on_test_data(runs: list[Run]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The runs, less those whose test rows disagree with the others tested on the same data.

    Training records a fingerprint of the test images and grades (``test_data``); runs that
    share it tested the same images, so their predictions files hold the same grades row by
    row. One whose grades differ from those most such runs hold (rows shifted, lost or
    replaced) is set apart with its reason. Where no grades are held by more runs than any
    other, none is set apart, and runs pair only with runs of equal grades
    (:attr:`Run.tested_on`).
    """
    by_data: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if isinstance(run.metrics.get("test_data"), str):
            by_data[run.test_data].append(run)
    set_apart: dict[Path, str] = {}
    for members in by_data.values():
        counts: dict[tuple[str, str, int], int] = defaultdict(int)
        for run in members:
            counts[run.tested_on] += 1
        ranked = sorted(counts.values(), reverse=True)
        if len(ranked) < 2 or ranked[0] == ranked[1]:
            continue
        common = max(counts, key=counts.__getitem__)
        for run in members:
            if run.tested_on != common:
                set_apart[run.path] = (
                    "test_predictions.csv holds other grades, row by row, than the "
                    f"{counts[common]} runs tested on the same data ({run.test_data}): "
                    "rows shifted, lost or replaced"
                )
    kept = [r for r in runs if r.path not in set_apart]
    return kept, sorted(set_apart.items())


def val_curve(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """Val AUROC by epoch from the run's ``csv/metrics.csv``; None where it has none, or a
    file that is not a regular one of bounded size or does not parse (the run still counts)."""
    path = run.path / "csv" / "metrics.csv"
    if not path.exists():
        return None
    by_epoch: dict[int, float] = {}
    try:
        rows = csv.DictReader(io.StringIO(read_text(path, MAX_TABLE_BYTES), newline=""))
        for row in rows:
            if row.get("val/auroc") and row.get("epoch"):
                # first value of an epoch: a later evaluation logged at epoch 0 is no curve point
                by_epoch.setdefault(int(float(row["epoch"])), float(row["val/auroc"]))
    except (OSError, ValueError, OverflowError, csv.Error):
        return None
    if not by_epoch:
        return None
    epochs = np.array(sorted(by_epoch))
    return epochs, np.array([by_epoch[e] for e in epochs])

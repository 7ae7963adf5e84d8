"""Runs read back from their folders and grouped into configurations; what ``mtcsnn.report``
shows, computed.

A run is a folder holding ``metrics.json`` and ``test_predictions.csv`` (what
``python -m mtcsnn.train`` writes). Runs are grouped into configurations by the config values
that differ between them, seeds aside. MTCSNN configurations are compared with the CE run of the
same backbone and seed, with a bootstrap 95% CI over test images, and all such pairs pooled (a
bootstrap over the pairs too); each configuration's seeds are also averaged into an ensemble.
Whatever is *chosen* (the best configuration, the recipe of a loss) is chosen on mean val
AUROC: the test split never chooses anything. Where every run of the configurations compared
kept its val predictions, the val AUROC that chooses is the held-out one
(:func:`mtcsnn.grading.selection.held_out_auroc`), which the noise of a run's val curve does not
lift.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mtcsnn.data.untrusted import (
    MAX_RECORD_BYTES,
    MAX_TABLE_BYTES,
    UnreadableFile,
    file_problem,
    read_text,
)
from mtcsnn.grading.comparison import PAIRED_METRICS, grade_scores, pooled_difference
from mtcsnn.grading.comparison import paired_difference as compare
from mtcsnn.grading.selection import held_out_auroc
from mtcsnn.run.config import (
    NOT_TRAINING_KEYS,
    NOT_TRAINING_SECTIONS,
    NOT_TRAINING_SUFFIXES,
    changes_training,
    flatten,
)
from mtcsnn.run.failures import FAILED, failure_reason

METRICS = ("auroc", "acc", "kappa", "mae")
OPTIONAL_METRICS = {"acc_within1": "off-by-one accuracy"}
HELD_OUT = "val/auroc_held_out"  # summarise's key for the held-out val AUROC
# config keys that differ between runs without making them different configurations: every
# setting that cannot change training (the list a resume uses too), and these
IGNORED_KEYS = NOT_TRAINING_KEYS | {
    # names of a sweep and its folder, not settings: what an experiment sets shows in the config
    "experiment",
    "task_name",
    # repeats of a configuration differ in their seeds
    "seed",
    "data.seed",
    # what the checkpoint watches and which way: they follow optimized_metric, which is shown
    "callbacks.model_checkpoint.monitor",
    "callbacks.model_checkpoint.mode",
    "callbacks.epoch_log.monitor",
    "callbacks.epoch_log.mode",
    "callbacks.early_stopping.monitor",
    "callbacks.early_stopping.mode",
}
IGNORED_PREFIXES = tuple(f"{section}." for section in NOT_TRAINING_SECTIONS)
IGNORED_SUFFIXES = NOT_TRAINING_SUFFIXES


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


# how far from 1 a row's probabilities may sum: written with 7 significant digits they are
# within 1e-6, and CORAL's differences of cumulative probabilities, clamped at 0, within a
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
    return grades, probs_array


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
    chosen_by = metrics.get("config", {}).get("optimized_metric")
    held_out = held_out_of(folder, chosen_by if isinstance(chosen_by, str) else "val/auroc")
    overridden = overridden_keys(folder, set(metrics.get("choices", {})))
    return Run(folder, metrics, grades, probs, settings, *held_out, overridden)


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


def _ignored(key: str) -> bool:
    name = key.split(".", 1)[1]  # choices.logger -> logger, config.loss.lam -> loss.lam
    return name in IGNORED_KEYS or not changes_training(name)


def varying_keys(runs: list[Run]) -> list[str]:
    """Settings that tell configurations apart: chosen config files, then values within them."""
    keys = sorted({k for r in runs for k in r.settings if not _ignored(k)})
    varying = [k for k in keys if len({r.settings.get(k) for r in runs}) > 1]
    # a key missing from older runs and constant where present (a setting added later, at its
    # default) does not tell configurations apart
    varying = [
        k
        for k in varying
        if len({r.settings[k] for r in runs if k in r.settings}) > 1
        or all(k in r.settings for r in runs)
    ]
    choices = [k for k in varying if k.startswith("choices.")]
    # a chosen group's values (model/scheduler -> model.scheduler.*) come with the choice
    chosen_groups = {k.split(".", 1)[1] for k in choices}
    values = []
    for key in varying:
        if key.startswith("choices."):
            continue
        path = key.split(".", 1)[1]
        owners = [g for g in chosen_groups if path.startswith(g.replace("/", ".") + ".")]
        if owners:
            group = max(owners, key=len)
            # e.g. loss.lam differs between loss=ce and loss=mtcsnn only because ce has none,
            # model.scheduler.gamma because each schedule's file has its own; but a value every
            # choice has and a command line set (each loss with its own label smoothing) is one
            by_choice = defaultdict(set)
            for r in runs:
                by_choice[r.settings.get(f"choices.{group}")].add(r.settings.get(key))
            set_by_hand = all(key in r.settings for r in runs) and any(
                r.overrode(key) for r in runs
            )
            if all(len(v) == 1 for v in by_choice.values()) and not set_by_hand:
                continue
        values.append(key)
    return choices + values


def short(key: str) -> str:
    """``choices.loss`` -> ``loss``, ``config.loss.lam`` -> ``loss.lam``."""
    return key.split(".", 1)[1]


def label(config: tuple) -> str:
    return ", ".join(f"{short(k)}={v}" for k, v in config) or "all runs"


NUM_CLASSES = "config.model.num_classes"


def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    keys = varying_keys(runs)
    # runs of other numbers of grades are never one configuration, whatever their config says
    by_grades = len({r.probs.shape[1] for r in runs}) > 1 and NUM_CLASSES not in keys
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        # a key the run has no value for (loss.lam of loss=ce) is left out of its label
        config = tuple((k, run.settings[k]) for k in keys if k in run.settings)
        if by_grades:
            config += ((NUM_CLASSES, run.probs.shape[1]),)
        groups[config].append(run)
    return dict(groups)


def paired_difference(
    pairs: list[tuple[Run, Run]], metric: str, num_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """:func:`mtcsnn.grading.comparison.paired_difference` of pairs of runs."""
    for a, b in pairs:
        if a.tested_on != b.tested_on:
            raise ValueError(f"{a.path} and {b.path} were not tested on the same images")
    return compare(
        [((a.grades, a.probs), (b.grades, b.probs)) for a, b in pairs],
        metric,
        num_resamples,
        seed,
    )


def summarise(runs: list[Run]) -> dict[str, tuple[float, float]]:
    out = {}
    for stage in ("test", "val"):
        for m in (*METRICS, *OPTIONAL_METRICS):
            values = [r.metrics[stage][m] for r in runs if m in r.metrics.get(stage, {})]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
                out[f"{stage}/{m}"] = (float(np.mean(values)), std)
    held_out = [r.held_out_val_auroc for r in runs]
    if held_out and all(v is not None for v in held_out):
        std = float(np.std(held_out, ddof=1)) if len(held_out) > 1 else float("nan")
        out[HELD_OUT] = (float(np.mean(held_out)), std)  # type: ignore[arg-type]
    return out


def choosing_metric(groups: list[list[Run]]) -> str:
    """What ranks these configurations: the held-out val AUROC where every run has it, else
    the best-epoch val AUROC (runs from before val predictions were kept)."""
    held_out = all(HELD_OUT in summarise(runs) for runs in groups)
    return HELD_OUT if held_out else "val/auroc"


def is_baseline(settings: dict) -> bool:
    """CE: ``loss=ce``, or the multi-task loss at lambda 0 (the same loss, see the README)."""
    return settings.get("choices.loss") == "ce" or settings.get("config.loss.lam") in (0, 0.0)


def baseline_of(config: tuple, groups: dict[tuple, list[Run]]) -> tuple | None:
    """The CE configuration that matches ``config`` in everything but the loss.

    ``loss=ce`` runs are preferred; a lambda sweep without them is compared with its lambda 0.
    """
    settings = dict(config)
    if is_baseline(settings):
        return None
    candidates = []
    for other in groups:
        other_settings = dict(other)
        if not is_baseline(other_settings):
            continue
        # loss values both configurations have must match too (label_smoothing; a lambda-0
        # run's difference); lam, and values loss=ce has none of, are left out
        same = all(
            other_settings.get(k) == v
            for k, v in settings.items()
            if k not in ("choices.loss", "config.loss.lam")
            and (not k.startswith("config.loss.") or k in other_settings)
        )
        if same:
            candidates.append(other)
    candidates.sort(key=lambda c: dict(c).get("choices.loss") != "ce")
    return candidates[0] if candidates else None


def comparisons(groups: dict[tuple, list[Run]], num_resamples: int) -> list[dict]:
    rows = []
    for config, runs in groups.items():
        base = baseline_of(config, groups)
        if base is None:
            continue
        # a pair is one seed tested on the same images; every pair of a row on one test set
        by_key = {(r.seed, r.tested_on): r for r in groups[base]}
        pairs = [(r, by_key[r.seed, r.tested_on]) for r in runs if (r.seed, r.tested_on) in by_key]
        if not pairs:
            continue
        # the test set most pairs share (the first of equals)
        counts = Counter(a.tested_on for a, _ in pairs)
        most = max(counts, key=counts.__getitem__)
        pairs = [(a, b) for a, b in pairs if a.tested_on == most]
        row = {"config": config, "baseline": base, "seeds": len(pairs), "pairs": pairs}
        for metric in PAIRED_METRICS:
            row[metric] = paired_difference(pairs, metric, num_resamples)
        rows.append(row)
    return rows


def pooled_comparison(compared: list[dict], num_resamples: int) -> dict | None:
    """MTCSNN - CE over the pairs of every configuration compared, with
    :func:`mtcsnn.grading.comparison.pooled_difference`'s CI (pairs and test images resampled).

    Only pairs tested on the images most pairs share take part. None unless they come from two
    or more configurations: for one, its own row says it all.
    """
    by_data: dict[tuple, list[tuple[tuple, Run, Run]]] = defaultdict(list)
    for row in compared:
        for a, b in row["pairs"]:
            if a.tested_on == b.tested_on:
                by_data[a.tested_on].append((row["config"], a, b))
    if not by_data:
        return None
    kept = max(by_data.values(), key=len)
    configs = {c for c, _, _ in kept}
    if len(configs) < 2:
        return None
    pairs = [((a.grades, a.probs), (b.grades, b.probs)) for _, a, b in kept]
    row: dict = {"configs": len(configs), "pairs": len(pairs)}
    for metric in PAIRED_METRICS:
        row[metric] = pooled_difference(pairs, metric, num_resamples)
    return row


def ensemble(runs: list[Run]) -> tuple[list[Run], np.ndarray, np.ndarray] | None:
    """The seeds of one configuration averaged: their class probabilities, mean over runs.

    Only runs tested on the same images take part (the largest such set, one run per seed);
    each is its own best-val checkpoint, so nothing is chosen on test. None below two seeds.
    """
    by_data: dict[tuple, dict[int | None, Run]] = defaultdict(dict)
    for run in runs:
        by_data[run.tested_on].setdefault(run.seed, run)
    members = max(by_data.values(), key=len, default={})
    members_list = list(members.values())
    if len(members_list) < 2:
        return None
    probs = np.mean([r.probs for r in members_list], axis=0)
    return members_list, members_list[0].grades, probs


def ensemble_rows(groups: dict[tuple, list[Run]], num_resamples: int) -> list[dict]:
    """Each configuration's seed ensemble, and its difference to the CE ensemble."""
    ensembles = {config: ensemble(runs) for config, runs in groups.items()}
    rows = []
    for config, made in ensembles.items():
        if made is None:
            continue
        members, grades, probs = made
        row = {"config": config, "seeds": len(members), "scores": grade_scores(grades, probs)}
        base = baseline_of(config, groups)
        base_made = ensembles.get(base) if base is not None else None
        if base_made is not None and base_made[0][0].tested_on == members[0].tested_on:
            pair = [((grades, probs), (base_made[1], base_made[2]))]
            row["baseline"] = base
            for metric in PAIRED_METRICS:
                row[metric] = compare(pair, metric, num_resamples)
        rows.append(row)
    return rows


# a configuration tried on fewer seeds is listed, never chosen: one seed's val is noise
MIN_SEEDS_TO_CHOOSE = 3


def chosen_on_val(groups: dict[tuple, list[Run]]) -> list[dict]:
    """For each loss with several configurations: those with at least
    :data:`MIN_SEEDS_TO_CHOOSE` seeds by mean val AUROC (held out where every run has it:
    :func:`choosing_metric`; the first is chosen), then those with fewer; test numbers are
    shown beside them, never used to order them.

    The multi-task loss at lambda 0 is CE (:func:`is_baseline`): it is ranked with CE, so what
    is chosen for MTCSNN always trains its severity score.
    """
    by_loss: dict[object, list[tuple]] = defaultdict(list)
    for config, runs in groups.items():
        if "val/auroc" in summarise(runs):
            settings = runs[0].settings
            loss = "ce" if is_baseline(settings) else settings.get("choices.loss")
            by_loss[loss].append(config)
    rows = []
    for loss, configs in sorted(by_loss.items(), key=lambda kv: str(kv[0])):
        if len(configs) < 2:
            continue
        metric = choosing_metric([groups[c] for c in configs])
        ranked = sorted(configs, key=lambda c: -summarise(groups[c])[metric][0])
        enough = [c for c in ranked if len({r.seed for r in groups[c]}) >= MIN_SEEDS_TO_CHOOSE]
        rows.append(
            {
                "loss": loss,
                "ranked": enough,
                "too_few": [c for c in ranked if c not in enough],
                "metric": metric,
            }
        )
    return rows


def best_configuration(groups: dict[tuple, list[Run]]) -> tuple:
    """Highest mean val AUROC (held out where every run has it, see :func:`choosing_metric`):
    the test split plays no part in choosing."""
    metric = choosing_metric(list(groups.values()))
    return max(groups, key=lambda c: summarise(groups[c]).get(metric, (-1.0, 0))[0])


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

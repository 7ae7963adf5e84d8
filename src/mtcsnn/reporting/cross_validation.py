"""The runs of a K-fold cross-validation (``experiment=cv``, ``data.folds=K``) put together.

The K runs of one configuration and seed, one per fold, become one :class:`FoldSet`, which the
rest of the report treats as one run:

- its *val* figures are out-of-fold: every pooled train+val image predicted by the fold model
  that did not train on it (each at the epoch its own fold's val chose), 1,200 images on
  RetinaMNIST instead of 120, so configurations are chosen on them;
- its *test* predictions are the fold ensemble: the K models' test probabilities averaged;
  its referral thresholds and calibration temperature are chosen on the out-of-fold
  predictions (as a run's are on val) and applied to the fold ensemble.

A set is used only when it is whole: folds ``0 .. K-1`` each once, their val images disjoint and
together the whole pool, all tested on the same images. Otherwise its runs are left out with the
reason.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtcsnn.data.folds import ALL
from mtcsnn.errors import ConfigError
from mtcsnn.grading.comparison import PAIRED_METRICS, grade_figures
from mtcsnn.grading.comparison import paired_difference as compare
from mtcsnn.grading.referral import referral_settings, screening_metrics
from mtcsnn.reporting.comparing import baseline_of
from mtcsnn.reporting.grouping import ignored, label
from mtcsnn.reporting.markdown import difference_cells, md, mean_std
from mtcsnn.reporting.predictions import read_val_epochs
from mtcsnn.reporting.runs import Run
from mtcsnn.run.files import best_epoch_number

FOLDS = "config.data.folds"
METRICS = ("auroc", "acc", "kappa")  # of the out-of-fold predictions and the fold ensemble
FOLD = "config.data.fold"
EACH = "each"


@dataclass
class FoldSet(Run):
    """K fold runs of one configuration and seed, seen as one run (see the module)."""

    folds: list[Run] = field(default_factory=list)
    fold_val_auroc: list[float] = field(default_factory=list)  # each fold's own val AUROC
    # the pooled images: their index (train images first, then val), grades, probabilities
    oof_index: np.ndarray | None = None
    oof_grades: np.ndarray | None = None
    oof_probs: np.ndarray | None = None


def is_fold_run(run: Run) -> bool:
    """A run of one fold (a refit trains on all of them, ``data.fold=all``)."""
    return run.settings.get(FOLDS) is not None and run.settings.get(FOLD) != ALL


def combine_folds(runs: list[Run]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The runs with every whole fold set made one :class:`FoldSet`; the fold runs of sets
    that are not whole are skipped, with why."""
    plain = [r for r in runs if not is_fold_run(r)]
    sets: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if is_fold_run(run):
            sets[_set_key(run)].append(run)
    combined: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    for members in sets.values():
        made = fold_set(members)
        if isinstance(made, FoldSet):
            combined.append(made)
        else:
            skipped += [(r.path, f"cross-validation: {made}") for r in members]
    return plain + combined, sorted(skipped)


def _set_key(run: Run) -> tuple:
    """What the runs of one set share: every setting that changes training but the fold."""
    settings = sorted((k, repr(v)) for k, v in run.settings.items() if k != FOLD and not ignored(k))
    return (tuple(settings), run.seed)


def fold_set(runs: list[Run]) -> FoldSet | str:
    """The fold runs of one configuration and seed as one run, or why they cannot be."""
    folds = runs[0].settings[FOLDS]
    by_fold: dict[object, list[Run]] = defaultdict(list)
    for run in runs:
        by_fold[run.settings.get(FOLD)].append(run)
    twice = sorted(str(f) for f, members in by_fold.items() if len(members) > 1)
    if twice:
        return f"fold {', '.join(twice)} of seed {runs[0].seed} ran more than once"
    missing = [k for k in range(folds) if k not in by_fold]
    if missing or len(by_fold) != folds:
        return (
            f"seed {runs[0].seed} has {len(by_fold)} of {folds} folds "
            f"(missing {', '.join(map(str, missing)) or 'none'}); run the others"
        )
    ordered = [by_fold[k][0] for k in range(folds)]
    if len({r.tested_on for r in ordered}) != 1:
        return f"the folds of seed {runs[0].seed} were not tested on the same images"
    pooled = out_of_fold(ordered)
    if isinstance(pooled, str):
        return pooled
    index, grades, probs = pooled
    test_probs = np.mean([r.probs for r in ordered], axis=0)
    first = ordered[0]
    try:
        referral = referral_settings((first.metrics.get("config") or {}).get("grading"))
    except ConfigError as err:
        return f"the grading settings of seed {first.seed}'s folds cannot be used: {err}"
    # referable DR and calibration as a run has them, thresholds and temperature chosen on
    # the out-of-fold predictions and applied to the fold ensemble
    val_screening, test_screening = screening_metrics(
        (grades, probs), (first.grades, test_probs), referral
    )
    metrics = {
        "test": {**grade_figures(first.grades, test_probs), **test_screening},
        "val": {**grade_figures(grades, probs), **val_screening},
        "seed": first.seed,
        "test_data": first.metrics.get("test_data"),
        "test_confusion": _confusion(first.grades, test_probs).tolist(),
        "config": first.metrics.get("config"),
        "choices": first.metrics.get("choices"),
    }
    # "each" fold its own model, told apart from a refit's "all" where both are reported
    settings = {**first.settings, FOLD: EACH}
    return FoldSet(
        path=_common_folder([r.path for r in ordered]),
        metrics=metrics,
        grades=first.grades,
        probs=test_probs,
        settings=settings,
        overridden=frozenset().union(*(r.overridden for r in ordered)),
        folds=ordered,
        fold_val_auroc=[float(r.metrics["val"]["auroc"]) for r in ordered],
        oof_index=index,
        oof_grades=grades,
        oof_probs=probs,
    )


def _common_folder(paths: list[Path]) -> Path:
    """The folder the fold runs share, as the report was given it (relative stays relative)."""
    try:
        return Path(os.path.commonpath(paths))
    except ValueError:  # relative and absolute paths together
        return Path(os.path.commonpath([p.absolute() for p in paths]))


def out_of_fold(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """Each fold's val predictions at its tested epoch, put together in pool order:
    ``(index, grades, probabilities)``, or why they cannot be."""
    indices, grades, probs = [], [], []
    for k, run in enumerate(runs):
        epoch = best_epoch_number(run.metrics)
        path = run.path / "val_predictions.csv"
        if not isinstance(epoch, int) or not path.exists():
            return f"fold {k} ({run.path}) kept no val predictions of its tested epoch"
        try:
            epochs, index, fold_grades, fold_probs = read_val_epochs(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"fold {k}: val_predictions.csv unusable ({type(err).__name__}: {err})"
        if epoch - 1 not in epochs:  # the file counts epochs from 0
            return f"fold {k}: val_predictions.csv lacks epoch {epoch}, the one it tested"
        indices.append(index)
        grades.append(fold_grades)
        probs.append(fold_probs[epochs.index(epoch - 1)])
    index = np.concatenate(indices)
    if len(np.unique(index)) != len(index) or not np.array_equal(
        np.sort(index), np.arange(len(index))
    ):
        return "the folds' val images overlap or leave images of the pool out"
    order = np.argsort(index)
    return index[order], np.concatenate(grades)[order], np.concatenate(probs)[order]


def _confusion(grades: np.ndarray, probs: np.ndarray) -> np.ndarray:
    classes = probs.shape[1]
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (grades, probs.argmax(1)), 1)
    return confusion


def cv_rows(groups: dict[tuple, list[Run]]) -> list[dict]:
    """Per configuration of fold sets: folds, seeds, the folds' own val AUROC (mean and SD over
    every fold of every seed), the out-of-fold and fold-ensemble test figures (mean over
    seeds)."""
    rows = []
    for config, runs in groups.items():
        sets = [r for r in runs if isinstance(r, FoldSet)]
        if not sets:
            continue
        fold_val = [v for s in sets for v in s.fold_val_auroc]
        epochs = [best_epoch_number(r.metrics) for s in sets for r in s.folds]
        row = {
            "config": config,
            "folds": len(sets[0].folds),
            "seeds": len(sets),
            "fold_val_auroc": (float(np.mean(fold_val)), float(np.std(fold_val, ddof=1))),
            # the epochs the folds' val chose: how long a model of all the pool would train
            "chosen_epochs": [int(e) for e in epochs if isinstance(e, int)],
        }
        for stage, name in (("val", "oof"), ("test", "ensemble")):
            for metric in METRICS:
                values = [s.metrics[stage][metric] for s in sets]
                row[f"{name}_{metric}"] = float(np.mean(values))
        rows.append(row)
    return rows


def oof_comparisons(groups: dict[tuple, list[Run]], num_resamples: int) -> list[dict]:
    """Each fold-set configuration against its CE one (:func:`baseline_of`), seed by seed, on
    the out-of-fold predictions: the difference with a paired bootstrap 95% CI over the pool."""
    rows = []
    for config in groups:
        base = baseline_of(config, groups)
        row = oof_difference(config, base, groups, num_resamples) if base is not None else None
        if row is not None:
            rows.append(row)
    return rows


def oof_difference(
    config: tuple, base: tuple, groups: dict[tuple, list[Run]], num_resamples: int
) -> dict | None:
    """``config`` - ``base`` on the out-of-fold predictions, seed by seed (paired bootstrap
    over the pool), or None where no seed of both was cross-validated on the same pool."""
    by_seed = {r.seed: r for r in groups[base] if isinstance(r, FoldSet)}
    pairs = [
        (r, by_seed[r.seed])
        for r in groups[config]
        if isinstance(r, FoldSet)
        and r.seed in by_seed
        and np.array_equal(r.oof_grades, by_seed[r.seed].oof_grades)
    ]
    if not pairs:
        return None
    pooled = [((a.oof_grades, a.oof_probs), (b.oof_grades, b.oof_probs)) for a, b in pairs]
    row = {"config": config, "baseline": base, "seeds": len(pairs)}
    for metric in PAIRED_METRICS:
        row[metric] = compare(pooled, metric, num_resamples)
    return row


def add_oof_differences(
    compared: list[dict], groups: dict[tuple, list[Run]], num_resamples: int
) -> None:
    """Sets each comparison row's ``out_of_fold`` (:func:`oof_difference` of its configuration
    against its baseline), None where the two were not both cross-validated."""
    for row in compared:
        row["out_of_fold"] = oof_difference(row["config"], row["baseline"], groups, num_resamples)


def cv_lines(rows: list[dict], compared: list[dict]) -> list[str]:
    """The page's cross-validation section."""
    if not rows:
        return []
    lines = [
        "",
        "## Cross-validation",
        "",
        "Each seed's K fold runs together. Fold val AUROC: each fold model on its own val fold "
        "(mean +/- std over every fold of every seed). Out-of-fold: every pooled train+val image "
        "predicted by the fold model that did not train on it. Fold ensemble: the K models' "
        "test probabilities averaged. Out-of-fold and ensemble figures are means over seeds. "
        "Elsewhere on this page each seed's folds count as one run: its val figures are the "
        "out-of-fold ones (which choose among configurations), its test figures the fold "
        "ensemble's.",
        "",
        "| configuration | folds | seeds | fold val AUROC | out-of-fold AUROC "
        "| out-of-fold accuracy | out-of-fold kappa | fold ensemble test AUROC "
        "| fold ensemble test accuracy | fold ensemble test kappa | epochs chosen (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: label(r["config"])):
        cells = [
            str(row["folds"]),
            str(row["seeds"]),
            mean_std(*row["fold_val_auroc"]),
            *(f"{row[f'{s}_{m}']:.4f}" for s in ("oof", "ensemble") for m in METRICS),
            _epochs_cell(row["chosen_epochs"]),
        ]
        lines.append(f"| {md(label(row['config']))} | " + " | ".join(cells) + " |")
    if compared:
        lines += [
            "",
            "Out-of-fold, against CE of the same settings, seed by seed (paired bootstrap 95% CI "
            "over the pooled images):",
            "",
            "| configuration | vs | paired seeds | out-of-fold AUROC difference [95% CI] "
            "| out-of-fold accuracy difference [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for row in compared:
            lines.append(
                f"| {md(label(row['config']))} | {md(label(row['baseline']))} | {row['seeds']} | "
                + " | ".join(difference_cells(row))
                + " |"
            )
    return lines


def _epochs_cell(epochs: list[int]) -> str:
    if not epochs:
        return "-"
    return f"{min(epochs)}-{max(epochs)} ({float(np.median(epochs)):g})"

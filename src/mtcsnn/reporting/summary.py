"""The report's machine-readable summary, ``summary.json``: the numbers of ``results.md``.

Everything the report's page shows as a number is here unrounded, so documents that quote a
report can be checked against it (a number in the docs is one of these, rounded as shown).
Configurations are named by the same label as on the page.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtcsnn.grading.comparison import PAIRED_METRICS
from mtcsnn.reporting.comparing import HELD_OUT, screening_summary, summarise
from mtcsnn.reporting.cross_validation import METRICS as CV_METRICS
from mtcsnn.reporting.grouping import label
from mtcsnn.reporting.referring import FIGURES as REFERRAL_FIGURES
from mtcsnn.reporting.runs import Run

if TYPE_CHECKING:
    from mtcsnn.reporting.findings import Findings

SUMMARY_FORMAT = 1


def number_or_null(value: float) -> float | None:
    """JSON has no NaN: a figure that does not exist (the std of one seed) is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def mean_std_summary(pair: tuple[float, float]) -> dict[str, float | None]:
    return {"mean": number_or_null(pair[0]), "std": number_or_null(pair[1])}


def difference_summary(row: dict) -> dict[str, dict[str, float | None]]:
    """``{"auroc": {"difference", "low", "high"}, "acc": ...}`` of a comparison row."""
    return {
        metric: dict(
            zip(("difference", "low", "high"), map(number_or_null, row[metric]), strict=True)
        )
        for metric in PAIRED_METRICS
    }


def _configuration(config: tuple, runs: list[Run], root: Path) -> dict:
    numbers = summarise(runs)
    stages: dict[str, dict] = {"test": {}, "val": {}}
    for key, pair in numbers.items():
        if key == HELD_OUT:
            continue
        stage, metric = key.split("/", 1)
        stages[stage][metric] = mean_std_summary(pair)
    if HELD_OUT in numbers:
        stages["val"]["auroc_held_out"] = mean_std_summary(numbers[HELD_OUT])
    decoded = [r.metrics["score_decoding"] for r in runs if "score_decoding" in r.metrics]
    if decoded:  # the severity score as a grader (test): thresholds fitted on val, pairwise
        stages["test"]["score_decoding"] = {
            way: {
                m: mean_std_summary(_mean_and_std([d[way]["test"][m] for d in decoded]))
                for m in ("acc", "kappa", "mae")
            }
            for way in ("thresholds", "pairwise")
        }
    for key, pair in screening_summary(runs).items():
        section, _, name = key.rpartition(".")
        target = stages["test"].setdefault(section, {}) if section else stages["test"]
        target[name] = mean_std_summary(pair)
    for stage, figures in stages.items():  # every other figure all the runs have (recall_2, loss)
        for name, values in _common_figures(runs, stage).items():
            figures.setdefault(name, mean_std_summary(_mean_and_std(values)))
    return {
        "configuration": label(config),
        "settings": {key.split(".", 1)[1]: value for key, value in config},
        "seeds": sorted({r.seed for r in runs}),
        "runs": sorted(_relative(r.path, root) for r in runs),
        **stages,
    }


def _common_figures(runs: list[Run], stage: str) -> dict[str, list[float]]:
    """The plain numbers of ``metrics.json``'s ``stage`` that every run has, by name."""
    tables = [r.metrics.get(stage) or {} for r in runs]
    names = set.intersection(*(set(t) for t in tables)) if tables else set()
    numbers = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return {
        name: [float(t[name]) for t in tables]
        for name in sorted(names)
        if all(numbers(t[name]) and math.isfinite(t[name]) for t in tables)
    }


def _mean_and_std(values: list[float]) -> tuple[float, float]:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def report_summary(findings: Findings, root: Path, num_resamples: int) -> dict:
    """The summary of one report: per configuration, the comparisons, ensembles, val's choice,
    and the cross-validated configurations where there are any."""
    groups, compared, pooled = findings.groups, findings.compared, findings.pooled
    ordered = sorted(groups.items(), key=lambda kv: label(kv[0]))
    versions = sorted(
        {
            tuple(sorted(r.metrics.get("versions", {}).items()))
            for runs in groups.values()
            for r in runs
        }
    )
    return {
        "format": SUMMARY_FORMAT,
        "bootstrap_resamples": num_resamples,
        "configurations": [_configuration(c, runs, root) for c, runs in ordered],
        "mtcsnn_vs_ce": [
            {
                "configuration": label(row["config"]),
                "baseline": label(row["baseline"]),
                "paired_seeds": row["seeds"],
                **difference_summary(row),
            }
            for row in compared
        ],
        "pooled": (
            {
                "configurations": pooled["configs"],
                "pairs": pooled["pairs"],
                **difference_summary(pooled),
            }
            if pooled
            else None
        ),
        "seed_ensembles": [
            {
                "configuration": label(row["config"]),
                "seeds": row["seeds"],
                "test": {m: number_or_null(v) for m, v in row["scores"].items()},
                **(
                    {"baseline": label(row["baseline"]), "vs_baseline": difference_summary(row)}
                    if "baseline" in row
                    else {}
                ),
            }
            for row in findings.ensembles
        ],
        "referring_the_uncertain": [
            {
                "configuration": label(row["config"]),
                "models": row["models"],
                "seeds": row["seeds"],
                "uncertainty": row["uncertainty"],
                **{f: mean_std_summary(row[f]) for f in REFERRAL_FIGURES if f in row},
            }
            for row in findings.referrals
        ],
        "robustness": [
            {
                "configuration": label(row["config"]),
                "seeds": row["seeds"],
                "clean_auroc": row["clean_auroc"],
                "mean_drop": row["mean_drop"],
                "auroc_drop": row["drop"],
                **(
                    {"baseline": label(row["baseline"]), "mce_vs_baseline": row["mce"]}
                    if "mce" in row
                    else {}
                ),
            }
            for row in findings.robustness
        ],
        "chosen_on_val": [
            {
                "loss": str(row["loss"]),
                "ranked_by": row["metric"],
                "ranked": [label(c) for c in row["ranked"]],
                "too_few_seeds": [label(c) for c in row["too_few"]],
            }
            for row in findings.rankings
        ],
        # each loss's val-chosen configuration against those it was ranked above, seed by seed
        "chosen_vs_passed_over": [
            {
                "configuration": label(row["config"]),
                "passed_over": label(row["baseline"]),
                "paired_seeds": row["seeds"],
                "test": difference_summary(row),
                "out_of_fold": (
                    difference_summary(row["out_of_fold"]) if row.get("out_of_fold") else None
                ),
            }
            for row in findings.margins
        ],
        # each multi-task loss's val-chosen configuration against CE's, seed by seed
        "val_choices_vs_ce": [
            {
                "configuration": label(row["config"]),
                "baseline": label(row["baseline"]),
                "paired_seeds": row["seeds"],
                **difference_summary(row),
                **({"mce": number_or_null(row["mce"])} if "mce" in row else {}),
            }
            for row in findings.choices
        ],
        "versions": [dict(v) for v in versions],
        **(
            {"cross_validation": cv_summary(findings.folds, findings.folds_compared)}
            if findings.folds
            else {}
        ),
    }


def cv_summary(rows: list[dict], compared: list[dict]) -> dict:
    """The cross-validation section: the numbers of
    :func:`mtcsnn.reporting.cross_validation.cv_lines`."""
    return {
        "configurations": [
            {
                "configuration": label(row["config"]),
                "folds": row["folds"],
                "seeds": row["seeds"],
                "fold_val_auroc": mean_std_summary(row["fold_val_auroc"]),
                "chosen_epochs": row["chosen_epochs"],
                "out_of_fold": {m: number_or_null(row[f"oof_{m}"]) for m in CV_METRICS},
                "fold_ensemble_test": {m: number_or_null(row[f"ensemble_{m}"]) for m in CV_METRICS},
            }
            for row in sorted(rows, key=lambda r: label(r["config"]))
        ],
        "out_of_fold_vs_ce": [
            {
                "configuration": label(row["config"]),
                "baseline": label(row["baseline"]),
                "paired_seeds": row["seeds"],
                **difference_summary(row),
            }
            for row in compared
        ],
    }

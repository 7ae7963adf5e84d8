"""Robustness of grouped runs: what each run's ``robustness.csv`` (``corruptions=...``) says,
per configuration: the AUROC lost to each corruption, and the corruption error against the CE
configuration of the same settings (ImageNet-C's mCE, with 1 - AUROC as the error)."""

from __future__ import annotations

import numpy as np

from mtcsnn.data.corruptions import CORRUPTIONS, SEVERITIES
from mtcsnn.reporting.comparing import baseline_of
from mtcsnn.reporting.grouping import label
from mtcsnn.reporting.runs import Run


def _measured(runs: list[Run]) -> list[str]:
    """The corruptions every run measured at every severity."""
    tables = [r.robustness for r in runs]
    if not tables or any(t is None for t in tables):
        return []
    return [c for c in CORRUPTIONS if all((c, s) in t for t in tables for s in SEVERITIES)]


def _mean_over(runs: list[Run], corruption: str) -> float:
    """Mean AUROC under ``corruption`` over its severities and the runs."""
    return float(np.mean([r.robustness[corruption, s]["auroc"] for r in runs for s in SEVERITIES]))


def corruption_error(runs: list[Run], base_runs: list[Run]) -> float | None:
    """ImageNet-C's mCE of ``runs`` against ``base_runs``: per corruption both measured, the sum
    over severities of 1 - AUROC over the base's, averaged; None where none is shared."""
    shared = [c for c in _measured(runs) if c in _measured(base_runs)]
    if not shared:
        return None
    errors = [(1 - _mean_over(runs, c)) / (1 - _mean_over(base_runs, c)) for c in shared]
    return float(np.mean(errors))


def robustness_rows(groups: dict[tuple, list[Run]]) -> list[dict]:
    """Per configuration whose runs all measured robustness: clean AUROC, AUROC lost to each
    corruption (mean over severities and seeds) and to all of them, and against the CE
    configuration of the same settings the mean corruption error (mCE: per corruption the sum
    over severities of 1 - AUROC, over CE's; 1.00 is as robust as CE, lower is better)."""
    rows = []
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        corruptions = _measured(runs)
        if not corruptions:
            continue
        clean = float(np.mean([r.robustness["none", 0]["auroc"] for r in runs]))
        drops = {c: clean - _mean_over(runs, c) for c in corruptions}
        row = {
            "config": config,
            "seeds": len({r.seed for r in runs}),
            "clean_auroc": clean,
            "drop": drops,
            "mean_drop": float(np.mean(list(drops.values()))),
        }
        base = baseline_of(config, groups)
        mce = corruption_error(runs, groups[base]) if base is not None else None
        if mce is not None:
            row.update(baseline=base, mce=mce)
        rows.append(row)
    return rows


def add_corruption_errors(compared: list[dict], groups: dict[tuple, list[Run]]) -> None:
    """Sets each comparison row's ``mce`` (:func:`corruption_error` of its configuration against
    its baseline) where both measured robustness."""
    for row in compared:
        mce = corruption_error(groups[row["config"]], groups[row["baseline"]])
        if mce is not None:
            row["mce"] = mce

"""Referring the uncertain images of grouped runs: risk-coverage figures per configuration,
for single runs (mean over seeds) and for each configuration's seed ensemble
(:mod:`mtcsnn.grading.selective`)."""

from __future__ import annotations

import numpy as np

from mtcsnn.grading.selective import (
    ENSEMBLE_UNCERTAINTIES,
    SCORE_MARGIN,
    UNCERTAINTIES,
    risk_coverage,
    score_margin,
    uncertainty,
)
from mtcsnn.reporting.comparing import ensemble, is_baseline
from mtcsnn.reporting.grouping import label
from mtcsnn.reporting.runs import Run

FIGURES = ("aurc", "accuracy", "kappa", "referable_sensitivity")


def _refer(run: Run) -> tuple[np.ndarray | None, int]:
    """The run's referral of each test image at the threshold its val chose (None without)."""
    chosen = (run.metrics.get("val") or {}).get("referable")
    if not isinstance(chosen, dict) or not isinstance(chosen.get("threshold"), (int, float)):
        return None, 2
    cut = int(chosen.get("cut", 2))
    return run.probs[:, cut:].sum(1) >= chosen["threshold"], cut


def _figures(curve: dict) -> dict[str, float]:
    point = curve["at_referred_share"]
    out = {"aurc": curve["aurc"], "accuracy": point["accuracy"], "kappa": point["kappa"]}
    if "referable_sensitivity" in point:
        out["referable_sensitivity"] = point["referable_sensitivity"]
    return out


def _uncertainty(run: Run, how: str) -> np.ndarray:
    if how == SCORE_MARGIN:
        assert run.scores is not None and run.val_scores is not None
        val_grades, val_scores = run.val_scores
        return score_margin(run.scores, val_scores, val_grades, run.probs.shape[1])
    return uncertainty(run.probs, how)


def _has_score_margin(config: tuple, runs: list[Run]) -> bool:
    """A multi-task configuration whose runs all kept test and val scores (CE's score head is
    not trained, so its margin says nothing)."""
    trained = not is_baseline(dict(config))
    return trained and all(r.scores is not None and r.val_scores is not None for r in runs)


def _mean_std(per_run: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    shared = [f for f in FIGURES if all(f in r for r in per_run)]
    out = {}
    for f in shared:
        values = [r[f] for r in per_run]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out[f] = (float(np.mean(values)), std)
    return out


def referral_rows(groups: dict[tuple, list[Run]]) -> list[dict]:
    """Per configuration and uncertainty: single runs (mean and std over seeds) and the seed
    ensemble, each with AURC and the figures at 10% referred. A multi-task configuration whose
    runs kept their scores gets the score margin too (an ensemble: its members' mean margin)."""
    rows = []
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        margin = _has_score_margin(config, runs)
        for how in (*UNCERTAINTIES, SCORE_MARGIN) if margin else UNCERTAINTIES:
            per_run = []
            for run in runs:
                refer, cut = _refer(run)
                curve = risk_coverage(run.grades, run.probs, _uncertainty(run, how), refer, cut)
                per_run.append(_figures(curve))
            rows.append(
                {
                    "config": config,
                    "models": "single",
                    "seeds": len(runs),
                    "uncertainty": how,
                    **_mean_std(per_run),
                }
            )
        made = ensemble(runs)
        if made is None:
            continue
        members, grades, probs = made
        stacked = np.stack([m.probs for m in members])
        for how in (*ENSEMBLE_UNCERTAINTIES, SCORE_MARGIN) if margin else ENSEMBLE_UNCERTAINTIES:
            if how == SCORE_MARGIN:
                scores = np.mean([_uncertainty(m, how) for m in members], axis=0)
            else:
                scores = uncertainty(probs, how, stacked)
            figures = _figures(risk_coverage(grades, probs, scores))
            rows.append(
                {
                    "config": config,
                    "models": "ensemble",
                    "seeds": len(members),
                    "uncertainty": how,
                    **{f: (v, float("nan")) for f, v in figures.items()},
                }
            )
    return rows

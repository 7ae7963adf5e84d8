"""Referring the uncertain images of grouped runs: risk-coverage figures per configuration,
for single runs (mean over seeds) and for each configuration's seed ensemble
(:mod:`mtcsnn.grading.selective`)."""

from __future__ import annotations

import numpy as np

from mtcsnn.grading.selective import (
    ENSEMBLE_UNCERTAINTIES,
    UNCERTAINTIES,
    risk_coverage,
    uncertainty,
)
from mtcsnn.reporting.comparing import ensemble
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


def referral_rows(groups: dict[tuple, list[Run]]) -> list[dict]:
    """Per configuration and uncertainty: single runs (mean and std over seeds) and the seed
    ensemble, each with AURC and the figures at 10% referred."""
    rows = []
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        for how in UNCERTAINTIES:
            per_run = []
            for run in runs:
                refer, cut = _refer(run)
                scores = uncertainty(run.probs, how)
                per_run.append(_figures(risk_coverage(run.grades, run.probs, scores, refer, cut)))
            shared = [f for f in FIGURES if all(f in r for r in per_run)]
            rows.append(
                {
                    "config": config,
                    "models": "single",
                    "seeds": len(runs),
                    "uncertainty": how,
                    **{
                        f: (
                            float(np.mean([r[f] for r in per_run])),
                            float(np.std([r[f] for r in per_run], ddof=1))
                            if len(per_run) > 1
                            else float("nan"),
                        )
                        for f in shared
                    },
                }
            )
        made = ensemble(runs)
        if made is None:
            continue
        members, grades, probs = made
        stacked = np.stack([m.probs for m in members])
        for how in ENSEMBLE_UNCERTAINTIES:
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

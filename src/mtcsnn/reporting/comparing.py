"""Configurations compared: MTCSNN with the CE run of the same backbone and seed (a bootstrap
95% CI over test images), all such pairs pooled, each configuration's seeds averaged into an
ensemble, and the configuration val chooses.

Whatever is *chosen* (the best configuration, the recipe of a loss) is chosen on mean val
AUROC: the test split never chooses anything. Where every run of the configurations compared
kept its val predictions, the val AUROC that chooses is the held-out one
(:func:`mtcsnn.grading.selection.held_out_auroc`), which the noise of a run's val curve does not
lift.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from mtcsnn.grading.comparison import PAIRED_METRICS, grade_scores, pooled_difference
from mtcsnn.grading.comparison import paired_difference as compare
from mtcsnn.reporting.runs import METRICS, OPTIONAL_METRICS, Run

HELD_OUT = "val/auroc_held_out"  # summarise's key for the held-out val AUROC


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


# the screening figures of a run's test pass (metrics.json), as "referable.auroc" etc.
SCREENING = (
    "referable.auroc",
    "referable.sensitivity",
    "referable.specificity",
    "referable.threshold",
    "ece",
    "brier",
    "nll",
)


def screening_summary(runs: list[Run]) -> dict[str, tuple[float, float]]:
    """Mean and std over seeds of each test screening figure every run has (runs from before
    they were measured have none; a figure a run could not give, null, leaves it out)."""
    out = {}
    for name in SCREENING:
        values = [_screening_value(r.metrics.get("test") or {}, name) for r in runs]
        if values and all(v is not None for v in values):
            std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            out[name] = (float(np.mean(values)), std)
    return out


def _screening_value(test: dict, name: str) -> float | None:
    section, _, key = name.rpartition(".")
    value = test.get(section, {}).get(key) if section else test.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def choosing_metric(groups: list[list[Run]]) -> str:
    """What ranks these configurations: the held-out val AUROC where every run has it, else
    the best-epoch val AUROC (runs from before val predictions were kept)."""
    held_out = all(HELD_OUT in summarise(runs) for runs in groups)
    return HELD_OUT if held_out else "val/auroc"


def is_baseline(settings: dict) -> bool:
    """CE: ``loss=ce``, or the multi-task loss at lambda 0: the same loss (the docs' Results
    page shows the two give the same numbers to the last digit)."""
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
    for config in groups:
        base = baseline_of(config, groups)
        row = _compared(config, base, groups, num_resamples) if base is not None else None
        if row is not None:
            rows.append(row)
    return rows


def _compared(
    config: tuple, base: tuple, groups: dict[tuple, list[Run]], num_resamples: int
) -> dict | None:
    """``config`` - ``base`` seed by seed, or None where no seed of one was tested like the
    other's."""
    # a pair is one seed tested on the same images; every pair of a row on one test set
    by_key = {(r.seed, r.tested_on): r for r in groups[base]}
    pairs = [
        (r, by_key[r.seed, r.tested_on]) for r in groups[config] if (r.seed, r.tested_on) in by_key
    ]
    if not pairs:
        return None
    # the test set most pairs share (the first of equals)
    counts = Counter(a.tested_on for a, _ in pairs)
    most = max(counts, key=counts.__getitem__)
    pairs = [(a, b) for a, b in pairs if a.tested_on == most]
    row = {"config": config, "baseline": base, "seeds": len(pairs), "pairs": pairs}
    for metric in PAIRED_METRICS:
        row[metric] = paired_difference(pairs, metric, num_resamples)
    return row


def val_choices_compared(
    groups: dict[tuple, list[Run]], rankings: list[dict], num_resamples: int
) -> list[dict]:
    """Each multi-task loss's val-chosen configuration (``rankings``: :func:`chosen_on_val`)
    against CE's, seed by seed: does the severity loss help when each loss has the settings its
    own val chose? Empty unless both were chosen among several configurations."""
    chosen = {row["loss"]: row["ranked"][0] for row in rankings if row["ranked"]}
    if "ce" not in chosen:
        return []
    rows = []
    for loss, config in sorted(chosen.items(), key=lambda kv: str(kv[0])):
        row = _compared(config, chosen["ce"], groups, num_resamples) if loss != "ce" else None
        if row is not None:
            rows.append(row)
    return rows


def chosen_against_the_rest(
    groups: dict[tuple, list[Run]], rankings: list[dict], num_resamples: int
) -> list[dict]:
    """Each loss's val-chosen configuration (``rankings``: :func:`chosen_on_val`) against every
    other it was ranked above, seed by seed on test: what the choice was worth on images that
    chose nothing. The row's ``baseline`` is the configuration passed over."""
    rows = []
    for ranking in rankings:
        chosen, *passed_over = ranking["ranked"] or [None]
        for other in passed_over:
            row = _compared(chosen, other, groups, num_resamples)
            if row is not None:
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

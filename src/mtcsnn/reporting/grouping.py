"""Runs grouped into configurations by the config values that differ between them, seeds
and settings that cannot change training aside.
"""

from __future__ import annotations

from collections import defaultdict

from mtcsnn.reporting.runs import Run
from mtcsnn.run.config import (
    NOT_TRAINING_KEYS,
    NOT_TRAINING_SECTIONS,
    NOT_TRAINING_SUFFIXES,
    changes_training,
)

# config keys that differ between runs without making them different configurations: every
# setting that cannot change training (the list a resume uses too), and these
IGNORED_KEYS = NOT_TRAINING_KEYS | {
    # names of a sweep and its folder, not settings: what an experiment sets shows in the config
    "experiment",
    "task_name",
    # a refit shows as data.fold=all; the sweep it came from is in its metrics.json
    "refit_from",
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


def ignored(key: str) -> bool:
    name = key.split(".", 1)[1]  # choices.logger -> logger, config.loss.lam -> loss.lam
    return name in IGNORED_KEYS or not changes_training(name)


def varying_keys(runs: list[Run]) -> list[str]:
    """Settings that tell configurations apart: chosen config files, then values within them."""
    keys = sorted({k for r in runs for k in r.settings if not ignored(k)})
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

"""What a refit (``refit_from=<a cross-validation sweep>``, :mod:`mtcsnn.run.refit`) takes from
its sweep: the whole fold sets of its own configuration (every setting that changes training
equal, the folds aside), the median of their folds' best-val epochs over every seed, and the
out-of-fold predictions of its own seed.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import ConfigError, DataError
from mtcsnn.reporting.cross_validation import FOLD, FOLDS, FoldSet, combine_folds
from mtcsnn.reporting.grouping import ignored
from mtcsnn.reporting.runs import collect_runs
from mtcsnn.run.config import current_names, flatten
from mtcsnn.run.files import best_epoch_number
from mtcsnn.run.refit import Refit

FOLD_SEED = "config.data.fold_seed"
# what a refit's own command line leaves to its sweep: the folds (refit_from is ignored() too)
NOT_COMPARED = {FOLDS, FOLD, FOLD_SEED}
SHOWN_DIFFERENCES = 4


def refit_plan(cfg: DictConfig, choices: dict[str, str]) -> Refit:
    """The :class:`Refit` of the run ``cfg`` (its config groups' ``choices``), read from the
    sweep ``cfg.refit_from``; a ConfigError or DataError saying what is missing there."""
    sweep = Path(str(cfg.refit_from)).expanduser()
    if not sweep.is_dir():
        raise ConfigError("refit_from", cfg.refit_from, "no such folder: give a sweep's folder")
    runs, _ = collect_runs(sweep)
    combined, left_out = combine_folds(runs)
    sets = [run for run in combined if isinstance(run, FoldSet)]
    if not sets:
        why = f" ({left_out[0][1]})" if left_out else ""
        raise DataError(
            f"refit_from={sweep}: no whole cross-validation set there{why}; "
            "a refit needs every fold of its configuration (experiment=cv) finished"
        )
    own = _compared(
        current_names(
            flatten({"choices": choices, "config": OmegaConf.to_container(cfg, resolve=True)}),
            prefix="config.",
        )
    )
    same = [s for s in sets if _compared(s.settings) == own]
    if not same:
        shown = min((_differences(own, _compared(s.settings)) for s in sets), key=len)
        raise DataError(
            f"refit_from={sweep}: no cross-validated configuration there is this run's; the "
            f"nearest differs in {'; '.join(shown[:SHOWN_DIFFERENCES])}"
            f"{' ...' if len(shown) > SHOWN_DIFFERENCES else ''}. Give the refit the settings "
            "of the configuration to refit"
        )
    fold_settings = {(s.settings[FOLDS], s.settings.get(FOLD_SEED, 0)) for s in same}
    if len(fold_settings) > 1:
        raise DataError(
            f"refit_from={sweep}: this configuration is cross-validated there with several "
            f"folds or fold seeds ({sorted(fold_settings)}): give a folder of one of them"
        )
    seed = cfg.get("seed")
    mine = [s for s in same if s.seed == seed]
    if not mine:
        raise DataError(
            f"refit_from={sweep}: this configuration is cross-validated there with seed "
            f"{', '.join(str(s) for s in sorted({s.seed for s in same}))}, not {seed}: "
            "refit with one of them, or run the sweep with this seed"
        )
    (folds, fold_seed), chosen = fold_settings.pop(), mine[0]
    assert chosen.oof_grades is not None and chosen.oof_probs is not None
    return Refit(
        sweep=str(sweep),
        folds=int(folds),
        fold_seed=int(fold_seed),
        fold_epochs=tuple(int(best_epoch_number(r.metrics)) for s in same for r in s.folds),
        grades=chosen.oof_grades,
        probs=chosen.oof_probs,
    )


def _compared(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in NOT_COMPARED and not ignored(k)}


def _differences(own: dict, theirs: dict) -> list[str]:
    """``key=ours (sweep: theirs)`` for each setting that differs, sorted by key."""
    absent = "(not set)"
    return [
        f"{key.split('.', 1)[1]}={own.get(key, absent)} (sweep: {theirs.get(key, absent)})"
        for key in sorted(set(own) | set(theirs))
        if own.get(key, absent) != theirs.get(key, absent)
    ]

"""``python -m mtcsnn.train [overrides]`` (or ``mtcsnn-train``): a run, a sweep or a search.

What a run does is in :mod:`mtcsnn.run.training`; ``hparams_search=<name>`` runs an Optuna
study (:mod:`mtcsnn.run.search`) instead, ``refit_from=<a cross-validation sweep>`` a refit on
all its folds (:mod:`mtcsnn.run.refit`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from mtcsnn.run.cli import command


@command("train")
def main(cfg: DictConfig) -> float | None:
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.run.checks import check_config
    from mtcsnn.run.failures import recorded
    from mtcsnn.run.training import train

    if cfg.get("hparams_search"):
        from mtcsnn.run.search import search  # optuna is imported only for a search

        check_config(cfg)  # before anything is built for it
        return search(cfg)
    # train checks the config first, inside recorded: a bad value fails only its own job of a
    # sweep, and a single run's folder says why it stopped (failed.json)
    results = recorded(train if cfg.get("refit_from") is None else refit, cfg)
    metric = cfg.get("optimized_metric")
    if results is None or not metric:
        return None
    stage, name = metric.split("/", 1)
    return results[stage][name]


def refit(cfg: DictConfig) -> dict:
    """A refit on every fold of the sweep ``refit_from`` (mtcsnn.run.refit)."""
    from mtcsnn.reporting.refit import refit_plan
    from mtcsnn.run.checks import check_config
    from mtcsnn.run.training import config_choices, train

    check_config(cfg)  # before the sweep is read
    return train(cfg, refit=refit_plan(cfg, config_choices()))


if __name__ == "__main__":
    main()

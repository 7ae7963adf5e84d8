"""Hyper-parameter search: an Optuna study whose trials are whole training runs.

Started by ``python -m mtcsnn.train hparams_search=<name>``. The search space lives in the
``hparams_search.params`` section of the config (``{type: float|int|categorical, ...}``); each
trial composes the train config with the user's overrides plus its suggested values, trains in
``<run dir>/trial_NNN`` and returns ``optimized_metric`` (a val metric: the test split never
steers the search).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mtcsnn.errors import ConfigError, MTCSNNError
from mtcsnn.grading import metric_mode
from mtcsnn.run.checkpoint import load_checkpoint
from mtcsnn.run.checks import check_config
from mtcsnn.run.evaluation import evaluation_results, referral_of
from mtcsnn.run.files import write_json
from mtcsnn.run.training import log_results, train, write_outputs

log = logging.getLogger(__name__)
PARAM_TYPES = ("float", "int", "categorical")


def suggest(trial: optuna.Trial, name: str, spec: dict) -> object:
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    raise ConfigError(
        f"hparams_search.params.{name}.type", kind, "choose one of: " + ", ".join(PARAM_TYPES)
    )


def trial_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The train config of one trial, with its output dir set as Hydra would set it."""
    cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        # the trials of one search form one sweep (one W&B group)
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.sweep.dir = str(output_dir.parent)
        cfg.hparams_search = None
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a @hydra.main task: the hydra node is reached via HydraConfig
    return cfg


def search(cfg: DictConfig) -> float:
    spec = OmegaConf.to_container(cfg.hparams_search, resolve=True)
    metric = cfg.optimized_metric
    check_config(cfg)  # among others: the metric is a val metric
    stage, name = metric.split("/", 1)
    out_dir = Path(cfg.paths.output_dir)
    user_overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
    outer = HydraConfig.instance().cfg  # each trial sets its own; restored at the end

    direction = "minimize" if metric_mode(metric) == "min" else "maximize"
    study = optuna.create_study(
        study_name=spec["study_name"],
        storage=spec.get("storage"),
        direction=direction,
        load_if_exists=True,
        sampler=None,
    )
    # a stored study keeps its direction: trial values of another metric would be mixed with
    # its own and the best chosen among them
    searched_on = study.user_attrs.get("optimized_metric")
    if study.trials and (
        searched_on not in (None, metric) or study.direction.name.lower() != direction
    ):
        raise ConfigError(
            "optimized_metric",
            metric,
            f"study {spec['study_name']!r} in {spec.get('storage')} was searched on "
            f"{searched_on or 'a metric to ' + study.direction.name.lower()}: use that metric, "
            "or another hparams_search.study_name",
        )
    study.set_user_attr("optimized_metric", metric)
    # A resumed study must not redraw the same start-up points: offset the seed by its size.
    study.sampler = optuna.samplers.TPESampler(seed=spec.get("sampler_seed", 0) + len(study.trials))

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, s) for key, s in spec["params"].items()}
        trial_dir = out_dir / f"trial_{trial.number:03d}"
        overrides = user_overrides + [f"{k}={v}" for k, v in values.items()]
        trial.set_user_attr("run_dir", str(trial_dir))
        trial_cfg = trial_config(overrides, trial_dir)
        check_config(trial_cfg)
        return float(train(trial_cfg, test=False)[stage][name])

    try:
        study.optimize(objective, n_trials=spec["n_trials"], catch=(MTCSNNError,))
    finally:
        HydraConfig.instance().cfg = outer
        write_json(out_dir / "search.json", study_summary(study, metric))
    best = study.best_trial
    log.info(
        "best %s %.4f with %s (%s)", metric, best.value, best.params, best.user_attrs["run_dir"]
    )
    # the chosen trial, and only it, sees the test split, once
    test = test_chosen_run(Path(best.user_attrs["run_dir"]), cfg)
    write_json(out_dir / "search.json", study_summary(study, metric, test))
    return best.value


def test_chosen_run(run_dir: Path, cfg: DictConfig) -> dict[str, float]:
    """Test the best checkpoint of a finished, untested run; its files get the test results."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("test") is not None:  # a resumed study whose best was tested before
        return metrics["test"]
    ckpt = load_checkpoint(metrics["best_checkpoint"])
    # the trial's own data, from the run record this search wrote (a checkpoint's is not built)
    data = instantiate(OmegaConf.create(metrics["config"]["data"]))
    tested = evaluation_results(ckpt.module, data, cfg.trainer, referral=referral_of(cfg))
    metrics.update({key: value for key, value in tested.items() if key != "val"})
    write_outputs(run_dir, ckpt.module, metrics)
    log_results(metrics, run_dir)
    return metrics["test"]


def study_summary(study: optuna.Study, metric: str, test: dict | None = None) -> dict:
    finished = [t for t in study.trials if t.value is not None]
    best = study.best_trial if finished else None
    return {
        "study_name": study.study_name,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
            "test": test,
        },
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "run_dir": t.user_attrs.get("run_dir"),
            }
            for t in study.trials
        ],
    }

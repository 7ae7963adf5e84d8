"""Hyper-parameter search: an Optuna study whose trials are whole training runs.

Started by ``python -m mtcsnn.train hparams_search=<name>``. The search space lives in the
``hparams_search.params`` section of the config (``{type: float|int|categorical, ...}``); each
trial composes the train config with the user's overrides plus its suggested values, trains in
``<run dir>/trial_NNN`` and returns ``optimized_metric`` (a val metric: the test split never
steers the search).

Several workers (processes, machines, the tasks of a SLURM array) can share one study through
``hparams_search.storage``: a database URL, or a file ending in ``.journal`` (Optuna's journal
file, for shared file systems, where SQLite is unsafe). ``n_trials`` is the study's total: a
worker asks for a trial only while fewer have been taken, and gives back (marked failed, never
run) one whose number lies past the total. A running trial beats every ``heartbeat_s``; one
whose worker died stops beating, and after ``stale_after_s`` the next worker marks it failed
and enqueues the same values again. The chosen trial is tested once, by the worker that ends
the study, under the trial dir's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from mtcsnn.errors import ConfigError, MTCSNNError
from mtcsnn.grading import metric_mode
from mtcsnn.run.checkpoint import load_checkpoint
from mtcsnn.run.checks import check_config
from mtcsnn.run.evaluation import evaluation_results, referral_of
from mtcsnn.run.files import write_json
from mtcsnn.run.run_dir import RunDirError, hold, release
from mtcsnn.run.training import log_results, train, write_outputs

log = logging.getLogger(__name__)
PARAM_TYPES = ("float", "int", "categorical")
# a trial's user attributes: its last heartbeat (seconds since the epoch), and why it failed
HEARTBEAT = "heartbeat"
FAILED_BECAUSE = "failed_because"
# why a failed trial does not count towards n_trials: never run, or its worker died
NOT_COUNTED = ("n_trials taken by other workers", "its worker stopped")


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
        storage=study_storage(spec.get("storage")),
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
    # A resumed study must not redraw the same start-up points: offset the seed by its size
    # (and by the task of a SLURM array: its workers start together, on a study of one size).
    # (Mixed, not added: seed 0 on a study of one trial must not draw as seed 1 on none.)
    worker = int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)
    entropy = [spec.get("sampler_seed", 0), len(study.trials), worker]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed)

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, s) for key, s in spec["params"].items()}
        trial_dir = out_dir / f"trial_{trial.number:03d}"
        overrides = user_overrides + [f"{k}={v}" for k, v in values.items()]
        trial.set_user_attr("run_dir", str(trial_dir))
        trial_cfg = trial_config(overrides, trial_dir)
        check_config(trial_cfg)
        return float(train(trial_cfg, test=False)[stage][name])

    beat = (spec.get("heartbeat_s", 60), spec.get("stale_after_s", 300))
    try:
        run_trials(study, objective, spec["n_trials"], *beat)
    finally:
        HydraConfig.instance().cfg = outer
        write_json(out_dir / "search.json", study_summary(study, metric))
    best = study.best_trial
    log.info(
        "best %s %.4f with %s (%s)", metric, best.value, best.params, best.user_attrs["run_dir"]
    )
    elsewhere = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if elsewhere:
        log.info(
            "%d trial(s) still run in other workers: the worker that ends the study tests the "
            "chosen trial",
            len(elsewhere),
        )
        return best.value
    # the chosen trial, and only it, sees the test split, once
    test = test_chosen_run(Path(best.user_attrs["run_dir"]), cfg)
    write_json(out_dir / "search.json", study_summary(study, metric, test))
    return best.value


def study_storage(location: str | None) -> optuna.storages.BaseStorage | None:
    """Where a study is kept: in memory (None), a journal file (a path ending in ``.journal``:
    appends with file locks, safe on shared file systems) or a database URL."""
    if location is None:
        return None
    if str(location).endswith(".journal"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(location)))
    return _database(str(location))


def _database(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """A database storage; its tables are created by whichever worker comes first.

    Workers started together on a new database (a SLURM array) each create the tables: one
    wins, the others' ``CREATE`` fail on what it made, and they try again, finding it there.
    """
    import sqlalchemy.exc

    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(attempt * (0.5 + random.random()))  # apart from the others this time
    return optuna.storages.RDBStorage(url)  # the last try: its error, if any, is the error


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``: it runs or ran (a failed run included)."""
    return trial.state != TrialState.FAIL or trial.user_attrs.get(FAILED_BECAUSE) not in NOT_COUNTED


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    heartbeat_s: float,
    stale_after_s: float,
) -> None:
    """This worker's trials, until the study has ``n_trials`` that count (:func:`counts`);
    a failed run (an error of ours) is recorded and the next trial drawn."""
    while True:
        retry_stale(study, stale_after_s)
        trials = study.get_trials(deepcopy=False)
        # an enqueued trial (a dead worker's, to run again) counts but has yet to run: ask() gives
        # it to the first worker that asks
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if sum(map(counts, trials)) >= n_trials and not waiting:
            return
        trial = study.ask()
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if sum(map(counts, before)) >= n_trials:  # other workers took the rest meanwhile
            trial.set_user_attr(FAILED_BECAUSE, NOT_COUNTED[0])
            study.tell(trial, state=TrialState.FAIL)
            return
        try:
            with beating(trial, heartbeat_s):
                value = objective(trial)
        except MTCSNNError as error:
            log.warning("trial %d failed: %s", trial.number, error)
            trial.set_user_attr(FAILED_BECAUSE, str(error))
            study.tell(trial, state=TrialState.FAIL)
            continue
        except BaseException:
            trial.set_user_attr(FAILED_BECAUSE, "stopped")
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)


@contextlib.contextmanager
def beating(trial: optuna.Trial, every_s: float) -> Iterator[None]:
    """The trial's heartbeat while it runs: its ``heartbeat`` attribute, every ``every_s``."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            trial.set_user_attr(HEARTBEAT, time.time())

    trial.set_user_attr(HEARTBEAT, time.time())
    thread = threading.Thread(target=beat, name=f"trial {trial.number} heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def retry_stale(study: optuna.Study, stale_after_s: float) -> None:
    """Running trials whose heartbeat stopped over ``stale_after_s`` ago (their worker died):
    marked failed, and their values enqueued to run again."""
    storage = study._storage  # Optuna's own stale-trial handling works on it the same way
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.user_attrs.get(HEARTBEAT, trial.datetime_start.timestamp())
        if time.time() - last < stale_after_s:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, FAILED_BECAUSE, NOT_COUNTED[1])
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.warning(
            "trial %d: no heartbeat for %.0f s, its worker stopped: marked failed, its values "
            "enqueued again",
            trial.number,
            time.time() - last,
        )


def test_chosen_run(run_dir: Path, cfg: DictConfig) -> dict[str, float]:
    """Test the best checkpoint of a finished, untested run; its files get the test results.
    Held while tested: a second worker ending the study at once waits and reads the result."""
    while True:
        try:
            hold(run_dir)
            break
        except RunDirError:
            time.sleep(1)
    try:
        return _tested(run_dir, cfg)
    finally:
        release(run_dir)


def _tested(run_dir: Path, cfg: DictConfig) -> dict[str, float]:
    if not (run_dir / "metrics.json").is_file():
        raise MTCSNNError(
            f"the chosen trial's run {run_dir} has no metrics.json (moved or deleted?): it "
            "cannot be tested"
        )
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

"""One training run: build data, model, callbacks, loggers and trainer from ``_target_``, fit,
then validate and test the best-val checkpoint once and write ``metrics.json`` and
``test_predictions.csv`` into the run's output dir. The val and test pass it shares with eval
and a search is :mod:`mtcsnn.run.evaluation`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtcsnn.data import PairingFeedback
from mtcsnn.data.corruptions import check_corruptions
from mtcsnn.errors import StoppedError
from mtcsnn.grading.referral import chosen_on_val
from mtcsnn.models import MTCSNNModule
from mtcsnn.run.callbacks import AtomicCheckpointIO, RunState, epoch_progress_bar, signal_label
from mtcsnn.run.checkpoint import build_module, initialise_from
from mtcsnn.run.checks import check_config, cost_warnings
from mtcsnn.run.config import flatten
from mtcsnn.run.config_spec import spec_of_config
from mtcsnn.run.console import progress_bar_wanted, quiet_libraries
from mtcsnn.run.distributed import (
    cluster_environment,
    end_ddp_job,
    owns_run_dir,
    use_job_commands_for_ddp_children,
)
from mtcsnn.run.evaluation import evaluation_results, referral_of
from mtcsnn.run.failures import clear_failure, in_multirun
from mtcsnn.run.files import (
    best_epoch_number,
    finish_checkpoint,
    predictions_csv,
    versions,
    write_json,
    write_text_atomic,
)
from mtcsnn.run.refit import Refit, refit_config
from mtcsnn.run.robustness import measure_finished_run, robustness_rows, write_robustness
from mtcsnn.run.run_dir import (
    ResumeError,
    check_resume,
    hold,
    keep_original,
    release,
    remove_leftovers,
    restore_original,
)
from mtcsnn.run.wandb_logging import (
    finish_wandb,
    is_wandb,
    log_test_results,
    prepare_wandb,
    uses_wandb,
    wandb_identity,
)

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def instantiate_loggers(cfg: DictConfig, out_dir: Path) -> list:
    """The run's loggers; a W&B logger gets the run id kept in ``out_dir`` (resume continues it)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node and "_target_" in node:
            extra = wandb_identity(out_dir, bool(cfg.get("resume"))) if is_wandb(node) else {}
            loggers.append(instantiate(node, **extra))
    return loggers


def config_choices() -> dict[str, str]:
    """Which file of each config group the run used, e.g. ``{"model": "resnet18"}``."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


def set_threads(cfg: DictConfig) -> int:
    """``threads`` if set; under the joblib launcher an equal share of the cores per job."""
    threads = cfg.get("threads")
    if threads is None and HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
        n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
        if n_jobs and n_jobs > 0:
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def train(cfg: DictConfig, test: bool = True, refit: Refit | None = None) -> dict:
    """Fit, then validate and test the best-val checkpoint; returns what ``metrics.json`` holds.

    ``test=False`` (a search trial) stops after val: only the chosen configuration is tested.
    ``refit``: train on every fold of a cross-validation sweep instead (:mod:`mtcsnn.run.refit`).
    """
    quiet_libraries()
    check_config(cfg)
    launches_ddp = owns_run_dir()  # DDP's other processes (or SLURM tasks) join this run
    out_dir = Path(cfg.paths.output_dir)
    if launches_ddp:
        claim_run_dir(cfg, out_dir)  # before anything is printed or written
    for warning in cost_warnings(cfg):
        log.warning(warning)
    set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    wandb = uses_wandb(cfg)
    if wandb:
        prepare_wandb(out_dir)
    use_job_commands_for_ddp_children()
    failed = True
    try:
        results = fit_and_test(cfg, test, refit)
        failed = False
    finally:
        if wandb:
            finish_wandb(failed)  # also after a failure, so the next job of a sweep starts clean
        end_ddp_job(launched_here=launches_ddp)
        release(out_dir)
    return results


def claim_run_dir(cfg: DictConfig, out_dir: Path) -> None:
    """This run's dir, held by this process; a resume must continue the run that is there.

    Temporary files that a killed write left there are removed first (none is being written:
    the dir is held).
    """
    hold(out_dir)
    try:
        remove_leftovers(out_dir)
        if cfg.get("resume"):
            check_resume(out_dir, cfg, in_sweep=in_multirun())
            restore_original(out_dir)
        else:
            keep_original(out_dir)
    except BaseException:
        release(out_dir)
        raise


def resume_point(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint a ``resume=true`` run goes on from: ``checkpoints/last.ckpt``, or where
    that one is damaged (a copy cut short), the newest whole ``epoch_*.ckpt`` that holds the
    training state, with one warning line. None: no checkpoint, the run starts from scratch."""
    if not cfg.get("resume"):
        return None
    folder = out_dir / "checkpoints"
    last = folder / "last.ckpt"
    if not last.exists():
        log.info("resume=true but %s does not exist: starting from scratch", last)
        return None
    problem = _unresumable(last)
    if problem is None:
        log.info("resuming from %s", last)
        return last
    weights_only = []
    for candidate in sorted(folder.glob("epoch_*.ckpt"), key=_newest_first):
        reason = _unresumable(candidate)
        if reason is None:
            log.warning(
                "%s cannot be read (%s): resuming from %s, the newest whole checkpoint",
                last,
                problem,
                candidate,
            )
            return candidate
        if reason == NO_TRAINING_STATE:
            weights_only.append(candidate.name)
    if weights_only:
        raise ResumeError(
            f"{last} cannot be read ({problem}) and {', '.join(weights_only)} holds weights but "
            "no optimiser state (keep_training_state=false), so training cannot go on from it: "
            "start a new run, e.g. with init_from=<that checkpoint>"
        )
    log.warning(
        "%s cannot be read (%s) and no other checkpoint can: starting from scratch", last, problem
    )
    return None


NO_TRAINING_STATE = "no optimiser state"


def _newest_first(path: Path) -> tuple[float, str]:
    try:
        return (-path.stat().st_mtime, path.name)
    except OSError:
        return (0.0, path.name)


def _unresumable(path: Path) -> str | None:
    """Why training cannot go on from the checkpoint ``path``; None when it can."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # cut short: zip reader errors, EOFError, UnpicklingError
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    if not isinstance(state, dict) or "state_dict" not in state:
        return "not a training checkpoint"
    if "optimizer_states" not in state or "loops" not in state:
        return NO_TRAINING_STATE
    return None


def fit_and_test(cfg: DictConfig, test: bool = True, refit: Refit | None = None) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    clear_failure(out_dir)
    if cfg.get("resume") and (out_dir / "metrics.json").exists():
        # a finished run of a resumed sweep: keep it as it is, measuring what it was not asked
        log.info("resume=true: %s already finished, kept as it is", out_dir)
        measure_finished_run(cfg, out_dir, check_corruptions(cfg.get("corruptions")))
        return json.loads((out_dir / "metrics.json").read_text())
    if refit is not None:
        refit_config(cfg, refit)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    spec = spec_of_config(
        run_config, own=True
    )  # what every checkpoint says the model is; checked now
    datamodule = instantiate(cfg.data)
    model = build_module(cfg)
    if cfg.get("init_from"):
        initialise_from(model, cfg.init_from)
        log.info("initialised from %s", cfg.init_from)
    model.run_config, model.spec = run_config, spec
    loggers = instantiate_loggers(cfg, out_dir)
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    for lg in wandb_loggers:
        lg.log_hyperparams(flatten(model.run_config))  # one readable column per config key
    bar = progress_bar_wanted(cfg.trainer.get("enable_progress_bar", True))
    # hard pairing's scores reach the sampler through PairingFeedback, whatever callbacks
    callbacks = [PairingFeedback(), *instantiate_group(cfg.get("callbacks"))]
    if bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):  # a user's own wins
        callbacks.append(epoch_progress_bar())
    # a refit stops at the folds' epoch under the schedule of trainer.max_epochs, unvalidated
    stop = {} if refit is None else {"max_epochs": refit.epochs, "limit_val_batches": 0}
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=bar,
        plugins=[AtomicCheckpointIO(), *cluster_environment()],
        **stop,
    )

    start = time.perf_counter()
    resumed_from = resume_point(cfg, out_dir)
    try:
        # a last.ckpt is only ever unpickled as tensors and plain values
        trainer.fit(model, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)
    except SIGTERMException:
        signal_name = next(
            (cb.stop_signal for cb in trainer.callbacks if isinstance(cb, RunState)), None
        )
        # current_epoch has moved past the finished epoch: counted from 1, it is that epoch
        raise StoppedError(
            f"stopped by {signal_label(signal_name)} after epoch {trainer.current_epoch}; saved "
            f"{out_dir / 'checkpoints' / 'last.ckpt'}. Resume with the same command plus "
            f"hydra.run.dir={out_dir} resume=true",
            signal=signal_name,
        ) from None
    fit_seconds = time.perf_counter() - start

    # Model selection on val only: the test set is touched once, by the best-val checkpoint.
    # Its weights are loaded here (weights_only) and evaluated by trainers without the training
    # callbacks, so nothing swaps weights in or out; the val pass is not logged, which keeps the
    # loggers' val curves at one point per training epoch.
    checkpoint = trainer.checkpoint_callback
    ckpt_path = checkpoint.best_model_path if checkpoint is not None else ""
    epoch = None
    if ckpt_path:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        epoch = int(state["epoch"]) + 1  # Lightning counts from 0
    results = evaluation_results(
        model, datamodule, cfg.trainer, loggers, test=test, referral=referral_of(cfg), refit=refit
    )
    if refit is not None:
        results["refit"] = refit.record()
    results.update(
        best_epoch_number=epoch,
        best_checkpoint=ckpt_path or None,
        monitor=checkpoint.monitor if checkpoint is not None else None,
        epochs=trainer.current_epoch,
        resumed_from=str(resumed_from) if resumed_from else None,
        seed=cfg.seed,
        threads=torch.get_num_threads(),
        world_size=trainer.world_size,  # processes that trained it (DDP), 1 alone
        choices=config_choices(),
        wall_time_s={
            "fit": round(fit_seconds, 2),
            "total": round(time.perf_counter() - start, 2),
        },
        versions=versions(),
        config=model.run_config,
    )
    if trainer.is_global_zero:  # under DDP every process has the results; one writes them
        keep_training_state = bool(cfg.get("keep_training_state"))
        if ckpt_path:  # what val chose, for predict (kept before the run is marked finished)
            finish_checkpoint(
                ckpt_path, chosen_on_val(results["val"]), weights_only=not keep_training_state
            )
        corruptions = check_corruptions(cfg.get("corruptions"))
        if test and corruptions:  # before metrics.json, the file that marks the run finished
            rows = robustness_rows([model], datamodule.splits["test"], corruptions, cfg.seed)
            write_robustness(out_dir / "robustness.csv", rows)
        write_outputs(out_dir, model, results)
        if not keep_training_state:  # only resuming needs it, and the run is finished
            (out_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
        if test:
            for lg in wandb_loggers:
                log_test_results(lg, model, datamodule, results)
        log_results(results, out_dir)
    return results


def write_outputs(
    out_dir: Path, model: MTCSNNModule | None, results: dict, predictions: dict | None = None
) -> None:
    """``test_predictions.csv`` then ``metrics.json`` (the file that marks a finished run).

    The predictions are ``model``'s last test pass, or ``predictions`` (an ensemble's).
    """
    if results.get("test") is not None:
        tested = predictions if predictions is not None else model.test_predictions
        write_text_atomic(out_dir / "test_predictions.csv", predictions_csv(tested))
    write_json(out_dir / "metrics.json", results)


def log_results(results: dict, out_dir: Path) -> None:
    if results.get("test") is None:
        log.info(
            "val: auroc %.4f (best val epoch %s; not tested: only the chosen trial is); wrote %s",
            results["val"]["auroc"],
            best_epoch_number(results),
            out_dir / "metrics.json",
        )
        return
    refit = results.get("refit")
    chosen = (
        f"refit for {refit['epochs']} epochs, its folds' median"
        if refit
        else f"best val epoch {best_epoch_number(results)}"
    )
    log.info(
        "test: auroc %.4f acc %.4f kappa %.4f mae %.4f (%s); wrote %s",
        results["test"]["auroc"],
        results["test"]["acc"],
        results["test"]["kappa"],
        results["test"]["mae"],
        chosen,
        out_dir / "metrics.json",
    )

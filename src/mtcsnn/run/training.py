"""One training run: build data, model, callbacks, loggers and trainer from ``_target_``, fit,
then validate and test the best-val checkpoint once and write ``metrics.json`` and
``test_predictions.csv`` into the run's output dir. Also the test pass that eval and a search
share with it.
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
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtcsnn.data import PairDataModule, PairingFeedback
from mtcsnn.errors import StoppedError
from mtcsnn.grading.comparison import grade_scores
from mtcsnn.grading.metrics import warn_once_together
from mtcsnn.grading.score_decoding import decode_if_trained
from mtcsnn.models import MTCSNNModule
from mtcsnn.models.lit_module import NonFiniteOutputError
from mtcsnn.run.callbacks import AtomicCheckpointIO, RunState
from mtcsnn.run.checkpoint import build_module, initialise_from, spec_of_config
from mtcsnn.run.checks import check_config, cost_warnings
from mtcsnn.run.config import flatten
from mtcsnn.run.console import metrics_line, progress_bar_wanted, quiet_libraries
from mtcsnn.run.distributed import end_ddp_job, use_job_commands_for_ddp_children
from mtcsnn.run.failures import clear_failure, in_multirun
from mtcsnn.run.files import (
    data_fingerprint,
    keep_weights_only,
    predictions_csv,
    versions,
    write_json,
    write_text_atomic,
)
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


def train(cfg: DictConfig, test: bool = True) -> dict:
    """Fit, then validate and test the best-val checkpoint; returns what ``metrics.json`` holds.

    ``test=False`` (a search trial) stops after val: only the chosen configuration is tested.
    """
    quiet_libraries()
    check_config(cfg)
    launches_ddp = "LOCAL_RANK" not in os.environ  # Lightning sets it in every DDP process
    out_dir = Path(cfg.paths.output_dir)
    if launches_ddp:  # DDP's other processes work in the same dir, for the same run
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
        results = fit_and_test(cfg, test)
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


def fit_and_test(cfg: DictConfig, test: bool = True) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    clear_failure(out_dir)
    if cfg.get("resume") and (out_dir / "metrics.json").exists():
        # a finished run of a resumed sweep: keep it as it is
        log.info("resume=true: %s already finished, kept as it is", out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
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
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        # hard pairing's scores reach the sampler through PairingFeedback, whatever callbacks
        callbacks=[PairingFeedback(), *instantiate_group(cfg.get("callbacks"))],
        logger=loggers or False,
        enable_progress_bar=progress_bar_wanted(cfg.trainer.get("enable_progress_bar", True)),
        plugins=[AtomicCheckpointIO()],
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
        raise StoppedError(
            f"stopped by {signal_name or 'SIGTERM'} after epoch {trainer.current_epoch - 1}; saved "
            f"{out_dir / 'checkpoints' / 'last.ckpt'}. Resume with the same command plus "
            f"hydra.run.dir={out_dir} resume=true"
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
        epoch = int(state["epoch"])
    results = evaluation_results(model, datamodule, cfg.trainer, loggers, test=test)
    results.update(
        best_epoch=epoch,
        best_checkpoint=ckpt_path or None,
        monitor=checkpoint.monitor if checkpoint is not None else None,
        epochs=trainer.current_epoch,
        resumed_from=str(resumed_from) if resumed_from else None,
        seed=cfg.seed,
        threads=torch.get_num_threads(),
        choices=config_choices(),
        wall_time_s={
            "fit": round(fit_seconds, 2),
            "total": round(time.perf_counter() - start, 2),
        },
        versions=versions(),
        config=model.run_config,
    )
    if trainer.is_global_zero:  # under DDP every process has the results; one writes them
        write_outputs(out_dir, model, results)
        if not cfg.get("keep_training_state"):
            drop_training_state(out_dir, ckpt_path)
        if test:
            for lg in wandb_loggers:
                log_test_results(lg, model, datamodule, results)
        log_results(results, out_dir)
    return results


def evaluation_results(
    model: MTCSNNModule,
    datamodule: PairDataModule,
    trainer_cfg: DictConfig,
    loggers: list | None = None,
    test: bool = True,
) -> dict:
    """What one val and one test pass of ``model`` give: the metrics of ``metrics.json``.

    Shared by a training run (its best checkpoint), ``mtcsnn.eval`` (any checkpoint) and a
    search (its chosen trial). ``test=False`` stops after val.
    """
    val, test_metrics = validate_and_test(model, datamodule, trainer_cfg, loggers, test=test)
    if test:  # the test pass refuses them already; nothing graded from NaN reaches metrics.json
        refuse_non_finite(model.test_predictions, "test")
    results: dict = {
        "val": val,
        "test": test_metrics,
        "test_confusion": model.test_confusion if test else None,
        # runs tested on other images are never paired by mtcsnn.report
        "test_data": data_fingerprint(*datamodule.splits["test"]) if test else None,
    }
    if test:
        # the severity score as a grader: thresholds fitted on val, pairwise inference
        decoded = decode_if_trained(model.net, model.loss, datamodule.splits)
        if decoded is not None:
            results["score_decoding"] = decoded
    return results


def ensemble_results(
    modules: list[MTCSNNModule], datamodule: PairDataModule, trainer_cfg: DictConfig
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Several checkpoints as one model: their test probabilities (and scores) averaged.

    Each member is evaluated as :func:`evaluation_results` does; the ensemble's test metrics
    come from the averaged probabilities. Returns the results and the averaged predictions.
    """
    # the members see the same val and test images: grades absent there are named once
    warn_once_together([module.val_metrics for module in modules])
    warn_once_together([module.test_metrics for module in modules])
    members = [evaluation_results(module, datamodule, trainer_cfg) for module in modules]
    predictions = [module.test_predictions for module in modules]
    order = [p["index"].argsort() for p in predictions]
    grades = predictions[0]["grade"][order[0]]
    averaged = {
        "index": predictions[0]["index"][order[0]],
        "grade": grades,
        "probs": torch.stack([p["probs"][o] for p, o in zip(predictions, order, strict=True)]).mean(
            0
        ),
        "score": torch.stack([p["score"][o] for p, o in zip(predictions, order, strict=True)]).mean(
            0
        ),
    }
    refuse_non_finite(averaged, f"test (ensemble of {len(modules)})")
    probs = averaged["probs"].double().numpy()
    pred = probs.argmax(1)
    confusion = torch.zeros(probs.shape[1], probs.shape[1], dtype=torch.long)
    confusion.index_put_((grades, torch.from_numpy(pred)), torch.tensor(1), accumulate=True)
    test = grade_scores(grades.numpy(), probs)
    log.info("test (ensemble of %d) %s", len(modules), metrics_line(test))
    results = {
        "val": None,  # each member's val metrics are under members
        "test": test,
        "test_confusion": confusion.tolist(),
        "test_data": members[0]["test_data"],
        "members": [{"val": m["val"], "test": m["test"]} for m in members],
    }
    return results, averaged


def refuse_non_finite(predictions: dict[str, torch.Tensor], split: str) -> None:
    """An error when any probability or score is NaN or infinite: such images are not graded."""
    values = [predictions[key].reshape(len(predictions[key]), -1) for key in ("probs", "score")]
    bad = int((~torch.cat([torch.isfinite(v) for v in values], dim=1).all(1)).sum())
    if bad:
        raise NonFiniteOutputError(
            f"non-finite probabilities or scores (NaN or infinite) for {bad} of "
            f"{len(values[0])} {split} images; they are not graded and no metrics are written"
        )


def validate_and_test(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    trainer_cfg: DictConfig,
    loggers: list | None = None,
    test: bool = True,
) -> tuple[dict[str, float], dict[str, float] | None]:
    """One val pass (not logged) and one test pass (logged) of ``model`` as it is now.

    Each is one short pass: no progress bar, and the metrics are logged with 4 digits here
    instead of Lightning's full-precision tables.
    """
    quiet = {"callbacks": [], "enable_progress_bar": False}
    validator: pl.Trainer = instantiate(trainer_cfg, **quiet, logger=False)
    val = validator.validate(model, datamodule=datamodule, verbose=False)[0]
    val_metrics = {k.removeprefix("val/"): float(v) for k, v in val.items()}
    if validator.is_global_zero:
        log.info("val  %s", metrics_line(val_metrics))
    if not test:
        return val_metrics, None
    evaluator: pl.Trainer = instantiate(trainer_cfg, **quiet, logger=loggers or False)
    tested = evaluator.test(model, datamodule=datamodule, verbose=False)[0]
    test_metrics = {k.removeprefix("test/"): float(v) for k, v in tested.items()}
    if validator.is_global_zero:
        log.info("test %s", metrics_line(test_metrics))
    return val_metrics, test_metrics


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


def drop_training_state(out_dir: Path, best_checkpoint: str) -> None:
    """A finished run keeps the best checkpoint's weights; resuming state is no longer needed.

    Logger callbacks (W&B ``log_model``) have uploaded their copies by now.
    """
    (out_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    if best_checkpoint:
        keep_weights_only(best_checkpoint)


def log_results(results: dict, out_dir: Path) -> None:
    if results.get("test") is None:
        log.info(
            "val: auroc %.4f (best val epoch %s; not tested: only the chosen trial is); wrote %s",
            results["val"]["auroc"],
            results["best_epoch"],
            out_dir / "metrics.json",
        )
        return
    log.info(
        "test: auroc %.4f acc %.4f kappa %.4f mae %.4f (best val epoch %s); wrote %s",
        results["test"]["auroc"],
        results["test"]["acc"],
        results["test"]["kappa"],
        results["test"]["mae"],
        results["best_epoch"],
        out_dir / "metrics.json",
    )

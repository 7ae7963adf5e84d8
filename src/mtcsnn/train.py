"""Entry point: ``python -m mtcsnn.train [overrides]`` (or ``mtcsnn-train``).

Composes the config, builds data, model, callbacks, loggers and trainer from ``_target_``,
trains, then validates and tests the best-val checkpoint once and writes ``metrics.json`` and
``test_predictions.csv`` into the run's output dir.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtcsnn.checkpoint import build_module
from mtcsnn.config import check_config, cost_warnings, flatten
from mtcsnn.distributed import end_ddp_job, use_job_commands_for_ddp_children
from mtcsnn.errors import MTCSNNError, StoppedError
from mtcsnn.loggers import finish_wandb, log_test_results, prepare_wandb, uses_wandb
from mtcsnn.models import MTCSNNModule
from mtcsnn.outputs import predictions_csv, versions, write_json, write_text_atomic
from mtcsnn.score_decoding import decode_if_trained
from mtcsnn.sweeps import clear_failure, record_failure

log = logging.getLogger(__name__)
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


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


def train(cfg: DictConfig) -> dict:
    """Fit, then validate and test the best-val checkpoint; returns what ``metrics.json`` holds."""
    check_config(cfg)
    for warning in cost_warnings(cfg):
        log.warning(warning)
    set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    wandb = uses_wandb(cfg)
    if wandb:
        prepare_wandb(Path(cfg.paths.output_dir))
    launches_ddp = "LOCAL_RANK" not in os.environ  # Lightning sets it in every DDP process
    use_job_commands_for_ddp_children()
    failed = True
    try:
        results = fit_and_test(cfg)
        failed = False
    finally:
        if wandb:
            finish_wandb(failed)  # also after a failure, so the next job of a sweep starts clean
        end_ddp_job(launched_here=launches_ddp)
    return results


def resume_point(cfg: DictConfig, out_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of this output dir when ``resume=true`` and it exists."""
    if not cfg.get("resume"):
        return None
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        log.info("resuming from %s", last)
        return last
    log.info("resume=true but %s does not exist: starting from scratch", last)
    return None


def fit_and_test(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    clear_failure(out_dir)
    if cfg.get("resume") and (out_dir / "metrics.json").exists():
        # a finished run of a resumed sweep: keep it as it is
        log.info("resume=true: %s already finished, kept as it is", out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
    datamodule = instantiate(cfg.data)
    model = build_module(cfg)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = instantiate_group(cfg.get("logger"))
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    for lg in wandb_loggers:
        lg.log_hyperparams(flatten(model.run_config))  # one readable column per config key
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers or False
    )

    start = time.perf_counter()
    resumed_from = resume_point(cfg, out_dir)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resumed_from)
    except SIGTERMException:
        raise StoppedError(
            f"stopped by SIGTERM after epoch {trainer.current_epoch - 1}; saved "
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
    val, test = validate_and_test(model, datamodule, cfg.trainer, loggers)

    results = {
        "val": val,
        "test": test,
        "test_confusion": model.test_confusion,
        "best_epoch": epoch,
        "best_checkpoint": ckpt_path or None,
        "monitor": checkpoint.monitor if checkpoint is not None else None,
        "epochs": trainer.current_epoch,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "seed": cfg.seed,
        "threads": torch.get_num_threads(),
        "choices": config_choices(),
        "wall_time_s": {
            "fit": round(fit_seconds, 2),
            "total": round(time.perf_counter() - start, 2),
        },
        "versions": versions(),
        "config": model.run_config,
    }
    if trainer.is_global_zero:  # under DDP every process has the results; one writes them
        # the severity score as a grader: thresholds fitted on val, pairwise inference
        decoded = decode_if_trained(model, getattr(datamodule, "splits", None))
        if decoded is not None:
            results["score_decoding"] = decoded
        write_outputs(out_dir, model, results)
        for lg in wandb_loggers:
            log_test_results(lg, model, datamodule, results)
        log_results(results, out_dir)
    return results


def validate_and_test(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    trainer_cfg: DictConfig,
    loggers: list | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """One val pass (not logged) and one test pass (logged) of ``model`` as it is now."""
    validator: pl.Trainer = instantiate(trainer_cfg, callbacks=[], logger=False)
    val = validator.validate(model, datamodule=datamodule)[0]
    evaluator: pl.Trainer = instantiate(trainer_cfg, callbacks=[], logger=loggers or False)
    test = evaluator.test(model, datamodule=datamodule)[0]
    return (
        {k.removeprefix("val/"): float(v) for k, v in val.items()},
        {k.removeprefix("test/"): float(v) for k, v in test.items()},
    )


def write_outputs(out_dir: Path, model: MTCSNNModule, results: dict) -> None:
    """``test_predictions.csv`` then ``metrics.json`` (the file that marks a finished run)."""
    write_text_atomic(out_dir / "test_predictions.csv", predictions_csv(model.test_predictions))
    write_json(out_dir / "metrics.json", results)


def log_results(results: dict, out_dir: Path) -> None:
    log.info(
        "test: auroc %.4f acc %.4f kappa %.4f mae %.4f (best val epoch %s); wrote %s",
        results["test"]["auroc"],
        results["test"]["acc"],
        results["test"]["kappa"],
        results["test"]["mae"],
        results["best_epoch"],
        out_dir / "metrics.json",
    )


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        if cfg.get("hparams_search"):
            from mtcsnn.search import search

            return search(cfg)
        results = train(cfg)
    except StoppedError as err:  # SIGTERM: the whole sweep stops, resumable
        raise SystemExit(f"error: {err}") from None
    except Exception as err:
        if not in_multirun():
            if isinstance(err, MTCSNNError):
                raise SystemExit(f"error: {err}") from None
            raise
        # one failing job of a sweep: recorded in its dir; the other jobs still run
        record_failure(Path(cfg.paths.output_dir), err)
        return None
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    stage, name = metric.split("/", 1)
    return results[stage][name]


def cli() -> None:
    """``python -m mtcsnn.train`` / ``mtcsnn-train``: misspelt keys are refused first."""
    import sys

    from mtcsnn.overrides import unknown_key_message

    message = unknown_key_message(
        [a for a in sys.argv[1:] if not a.startswith("-")], CONFIG_PATH, "train"
    )
    if message:
        raise SystemExit(f"error: {message}")
    main()


if __name__ == "__main__":
    cli()

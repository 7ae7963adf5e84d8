"""The val and test pass of a trained model, shared by a training run (its best checkpoint),
``mtcsnn.eval`` (any checkpoint, or a seed ensemble of several) and a search (its chosen
trial): the metrics ``metrics.json`` holds, never graded from a non-finite output.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mtcsnn.data import PairDataModule
from mtcsnn.grading.comparison import grade_figures, grade_scores
from mtcsnn.grading.metrics import warn_once_together
from mtcsnn.grading.referral import ReferralSettings, referral_settings, screening_metrics
from mtcsnn.grading.score_decoding import decode_if_trained
from mtcsnn.models import MTCSNNModule
from mtcsnn.models.lit_module import NonFiniteOutputError
from mtcsnn.run.console import metrics_line, screening_line
from mtcsnn.run.distributed import cluster_environment
from mtcsnn.run.files import (
    data_fingerprint,
)
from mtcsnn.run.refit import Refit

# named as the run's own lines: train.log and the console show one name for a run's passes
log = logging.getLogger("mtcsnn.run.training")


def evaluation_results(
    model: MTCSNNModule,
    datamodule: PairDataModule,
    trainer_cfg: DictConfig,
    loggers: list | None = None,
    test: bool = True,
    referral: ReferralSettings | None = None,
    refit: Refit | None = None,
) -> dict:
    """What one val and one test pass of ``model`` give: the metrics of ``metrics.json``.

    Shared by a training run (its best checkpoint), ``mtcsnn.eval`` (any checkpoint) and a
    search (its chosen trial). ``test=False`` stops after val. Beside the grade metrics: the
    referable-DR figures (thresholds chosen on val) and calibration of ``referral``'s settings.
    A ``refit`` (:mod:`mtcsnn.run.refit`) has no images of its own to validate on: its val
    figures, temperature and thresholds are its sweep's out-of-fold predictions, and its score
    is not decoded (that would fit thresholds on its own val scores).
    """
    if refit is None:
        val, test_metrics = validate_and_test(model, datamodule, trainer_cfg, loggers, test=test)
        val_predictions = model.val_predictions
    else:
        val = grade_figures(refit.grades, refit.probs)
        log.info(
            "val  %s (out-of-fold, %d folds of %s)", metrics_line(val), refit.folds, refit.sweep
        )
        test_metrics = test_pass(model, datamodule, trainer_cfg, loggers)
        val_predictions = {
            "grade": torch.from_numpy(refit.grades),
            "probs": torch.from_numpy(refit.probs),
        }
    if test:  # the test pass refuses them already; nothing graded from NaN reaches metrics.json
        refuse_non_finite(model.test_predictions, "test")
    add_screening(
        val,
        test_metrics,
        val_predictions,
        model.test_predictions if test else None,
        referral or ReferralSettings(),
    )
    results: dict = {
        "val": val,
        "test": test_metrics,
        "test_confusion": model.test_confusion if test else None,
        # runs tested on other images are never paired by mtcsnn.report
        "test_data": data_fingerprint(*datamodule.splits["test"]) if test else None,
    }
    if test and refit is None:
        # the severity score as a grader: thresholds fitted on val, pairwise inference
        decoded = decode_if_trained(model.net, model.loss, datamodule.splits)
        if decoded is not None:
            results["score_decoding"] = decoded
    return results


def ensemble_results(
    modules: list[MTCSNNModule],
    datamodule: PairDataModule,
    trainer_cfg: DictConfig,
    referral: ReferralSettings | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Several checkpoints as one model: their test probabilities (and scores) averaged.

    Each member is evaluated as :func:`evaluation_results` does; the ensemble's test metrics
    come from the averaged probabilities. Returns the results and the averaged predictions.
    """
    # the members see the same val and test images: grades absent there are named once
    warn_once_together([module.val_metrics for module in modules])
    warn_once_together([module.test_metrics for module in modules])
    referral = referral or ReferralSettings()
    members = [
        evaluation_results(module, datamodule, trainer_cfg, referral=referral) for module in modules
    ]
    averaged = averaged_predictions([module.test_predictions for module in modules])
    averaged_val = averaged_predictions([module.val_predictions for module in modules])
    refuse_non_finite(averaged, f"test (ensemble of {len(modules)})")
    grades = averaged["grade"]
    probs = averaged["probs"].double().numpy()
    pred = probs.argmax(1)
    confusion = torch.zeros(probs.shape[1], probs.shape[1], dtype=torch.long)
    confusion.index_put_((grades, torch.from_numpy(pred)), torch.tensor(1), accumulate=True)
    test = grade_scores(grades.numpy(), probs)
    log.info("test (ensemble of %d) %s", len(modules), metrics_line(test))
    add_screening({}, test, averaged_val, averaged, referral)
    results = {
        "val": None,  # each member's val metrics are under members
        "test": test,
        "test_confusion": confusion.tolist(),
        "test_data": members[0]["test_data"],
        "members": [{"val": m["val"], "test": m["test"]} for m in members],
    }
    return results, averaged


def referral_of(cfg: DictConfig) -> ReferralSettings:
    """The ``grading`` settings of a command's config (the defaults where it has none)."""
    node = cfg.get("grading")
    return referral_settings(None if node is None else OmegaConf.to_container(node, resolve=True))


def averaged_predictions(predictions: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Several models' predictions of the same images, in image order, their outputs averaged."""
    order = [p["index"].argsort() for p in predictions]
    averaged = {key: predictions[0][key][order[0]] for key in ("index", "grade")}
    for key in ("probs", "score"):
        if all(key in p for p in predictions):
            stacked = [p[key][o] for p, o in zip(predictions, order, strict=True)]
            averaged[key] = torch.stack(stacked).mean(0)
    return averaged


def add_screening(
    val: dict,
    test: dict | None,
    val_predictions: dict[str, torch.Tensor],
    test_predictions: dict[str, torch.Tensor] | None,
    referral: ReferralSettings,
) -> None:
    """Referable DR and calibration beside the grade metrics of ``val`` and ``test``, the
    referral thresholds chosen on val (:mod:`mtcsnn.grading.referral`)."""
    if not val_predictions:
        return
    as_arrays = lambda p: (p["grade"].numpy(), p["probs"].double().numpy())  # noqa: E731
    val_extra, test_extra = screening_metrics(
        as_arrays(val_predictions),
        as_arrays(test_predictions) if test_predictions else None,
        referral,
    )
    val.update(val_extra)
    if test is not None and test_extra is not None:
        test.update(test_extra)
        log.info("test %s", screening_line(test_extra))


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
    quiet = {"callbacks": [], "enable_progress_bar": False, "plugins": cluster_environment()}
    validator: pl.Trainer = instantiate(trainer_cfg, **quiet, logger=False)
    val = validator.validate(model, datamodule=datamodule, verbose=False)[0]
    val_metrics = {k.removeprefix("val/"): float(v) for k, v in val.items()}
    if validator.is_global_zero:
        log.info("val  %s", metrics_line(val_metrics))
    if not test:
        return val_metrics, None
    return val_metrics, test_pass(model, datamodule, trainer_cfg, loggers)


def test_pass(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    trainer_cfg: DictConfig,
    loggers: list | None = None,
) -> dict[str, float]:
    """One test pass (logged) of ``model`` as it is now: its metrics."""
    quiet = {"callbacks": [], "enable_progress_bar": False, "plugins": cluster_environment()}
    evaluator: pl.Trainer = instantiate(trainer_cfg, **quiet, logger=loggers or False)
    tested = evaluator.test(model, datamodule=datamodule, verbose=False)[0]
    test_metrics = {k.removeprefix("test/"): float(v) for k, v in tested.items()}
    if evaluator.is_global_zero:
        log.info("test %s", metrics_line(test_metrics))
    return test_metrics

"""``python -m mtcsnn.eval ckpt_path=...``: re-evaluate a checkpoint on val and test.

The model is rebuilt from the checkpoint's model spec; the data are the ones named on this
command line (``data=...``, RetinaMNIST by default), at the image size of the spec: nothing in
the checkpoint chooses which files are read or written. ``metrics.json`` and
``test_predictions.csv`` go to the output dir as in training.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mtcsnn.errors import MTCSNNError
from mtcsnn.run.cli import EXAMPLE_CKPT, command

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = f"python -m mtcsnn.eval ckpt_path={EXAMPLE_CKPT}"


class EvalDataError(MTCSNNError):
    """The data named for eval do not fit the checkpoint's model."""


def data_config(cfg: DictConfig, spec, data_kind: str | None) -> DictConfig:
    """The command line's data config, at the spec's image size, checked against the spec.

    ``data_kind`` is what ``cfg.data`` names (``retinamnist``, ``fundus_folder``,
    ``synthetic``; None for another data module). A model trained on a folder of photographs
    is evaluated on photographs the user names; its recorded labels file name is only shown.
    """
    data = cfg.data
    where = f"ckpt_path={cfg.ckpt_path}"
    if spec.trained_on == "fundus_folder":
        named = data_kind == "fundus_folder" and not OmegaConf.is_missing(data, "labels")
        if not named:
            # the name its run recorded, as text only: the user says where the file is
            name = spec.labels_name or "labels.csv"
            raise EvalDataError(
                f"{where} was trained on a folder of photographs (labels {name!r}, prepared at "
                f"{spec.image_size} px): name the photographs to evaluate it on: "
                f"data=fundus_folder data.labels=<folder>/{name}"
            )
        if spec.split is not None:
            split_as_trained(data, spec.split, where)
    if spec.folds is not None and data_kind == spec.trained_on:
        folds_as_trained(data, spec.folds, where)
    elif data_kind is not None and data_kind != spec.trained_on:
        log.warning(
            "%s was trained on %s data; evaluating it on data=%s",
            where,
            spec.trained_on,
            data_kind,
        )
    size = data.get("size")
    if size is not None and size != spec.image_size:
        raise EvalDataError(
            f"data.size={size!r} but {where} takes {spec.image_size}x{spec.image_size} images "
            "(its model spec says so): leave data.size out"
        )
    with open_dict(cfg):
        data.size = spec.image_size
        if cfg.get("data_root") and "root" in data:
            data.root = str(cfg.data_root)
    return data


def split_as_trained(data: DictConfig, split: tuple[float, float, int], where: str) -> None:
    """Split photographs without a split column as the model's training run did: another draw
    would put images it trained on into val and test. Numbers only are taken from the spec."""
    trained = dict(zip(("val_fraction", "test_fraction", "split_seed"), split, strict=True))
    given = _take(data, trained)
    if given != trained:
        log.warning(
            "%s was trained on photographs split with %s: without a split column they are split "
            "the same way here (not %s)",
            where,
            ", ".join(f"data.{k}={v}" for k, v in trained.items()),
            ", ".join(f"data.{k}={v}" for k, v in given.items()),
        )


def folds_as_trained(data: DictConfig, folds: tuple[int, int | str, int], where: str) -> None:
    """Validate a model of a cross-validation fold on that fold, as its run did: the official
    val split (or another fold) holds images it trained on. A refit trained on every fold, so
    no image of its data is left to validate on."""
    from mtcsnn.models.spec import EVERY_FOLD  # torch: imported after the command line's checks

    count, fold, seed = folds
    if fold == EVERY_FOLD:
        raise EvalDataError(
            f"{where} was refit on every train and val image of its data (refit_from): "
            "evaluated here, it would be validated on images it trained on. Its run's "
            "metrics.json holds its out-of-fold val figures and its test figures; evaluate it "
            "on other data"
        )
    trained = {"folds": count, "fold": fold, "fold_seed": seed}
    if _take(data, trained) != trained:
        log.warning(
            "%s was trained on fold %s of %s (fold seed %s): val is that fold here, as in its run",
            where,
            fold,
            count,
            seed,
        )


def _take(data: DictConfig, trained: dict) -> dict:
    """Set ``trained``'s values in ``data``; returns the values the command line had."""
    given = {key: data.get(key) for key in trained}
    with open_dict(data):
        for key, value in trained.items():
            data[key] = value
    return given


def evaluate(cfg: DictConfig) -> dict:
    """One checkpoint, or several (``ckpt_path=[a,b,...]``: an ensemble of their probabilities)."""
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.data.corruptions import check_corruptions
    from mtcsnn.run.checkpoint import load_checkpoints
    from mtcsnn.run.config_spec import DATA_KIND
    from mtcsnn.run.console import quiet_libraries
    from mtcsnn.run.evaluation import ensemble_results, evaluation_results, referral_of
    from mtcsnn.run.files import versions
    from mtcsnn.run.robustness import robustness_rows, write_robustness
    from mtcsnn.run.training import log_results, write_outputs

    start = time.perf_counter()
    corruptions = check_corruptions(cfg.get("corruptions"))  # before anything is loaded
    quiet_libraries()
    checkpoints = load_checkpoints(cfg.ckpt_path)  # one size, grades and preparation
    ckpt = checkpoints[0]
    data_kind = DATA_KIND.get(str(cfg.data.get("_target_")))
    data_cfg = data_config(cfg, ckpt.spec, data_kind)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(data_cfg)
    predictions = None
    if len(checkpoints) == 1:
        results = evaluation_results(
            ckpt.module, datamodule, cfg.trainer, referral=referral_of(cfg)
        )
    else:
        modules = [c.module for c in checkpoints]
        results, predictions = ensemble_results(modules, datamodule, cfg.trainer, referral_of(cfg))
    # this command's own config (with the data size the spec gave), and each model's spec:
    # nothing of the checkpoints' run records, which stay unread
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data"] = OmegaConf.to_container(data_cfg, resolve=True)  # type: ignore[index]
    results.update(
        # the checkpoint's epoch is Lightning's, counted from 0
        best_epoch_number=ckpt.epoch + 1
        if len(checkpoints) == 1 and ckpt.epoch is not None
        else None,
        best_checkpoint=str(ckpt.path.resolve()) if len(checkpoints) == 1 else None,
        checkpoints=[str(c.path.resolve()) for c in checkpoints],
        seed=ckpt.seed if len(checkpoints) == 1 else None,
        wall_time_s={"total": round(time.perf_counter() - start, 2)},
        versions=versions(),
        config=config,
        model_specs=[c.spec.to_dict() for c in checkpoints],
    )
    if corruptions:  # written before metrics.json, the file that marks the evaluation done
        modules = [c.module for c in checkpoints]
        rows = robustness_rows(modules, datamodule.splits["test"], corruptions, cfg.seed)
        write_robustness(out_dir / "robustness.csv", rows)
        log.info("wrote %s", out_dir / "robustness.csv")
    write_outputs(out_dir, ckpt.module, results, predictions)
    log_results(results, out_dir)
    return results


@command("eval", EXAMPLE)
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["test"]["auroc"]


if __name__ == "__main__":
    main()

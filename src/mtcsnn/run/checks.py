"""The checks run before anything is built: each setting's rule, applied by its config key."""

from __future__ import annotations

import re
from collections.abc import Callable

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mtcsnn.data.augment import check_augment
from mtcsnn.data.corruptions import check_corruptions
from mtcsnn.data.datamodule import PairDataModule, check_batch_size
from mtcsnn.data.folds import ALL
from mtcsnn.data.pairing import check_pairing
from mtcsnn.errors import ConfigError, require
from mtcsnn.grading import MONITORABLE, metric_mode
from mtcsnn.grading.referral import check_cuts, check_rule, check_target_sensitivity
from mtcsnn.losses.base import (
    check_difference,
    check_label_smoothing,
    check_lam,
    check_num_classes,
)
from mtcsnn.models.siamese_resnet import check_backbone, check_dropout, check_stem

_ABSENT = object()
MAX_SEED = 2**32 - 1  # numpy's seed range


def _value(cfg: DictConfig, key: str) -> object:
    """The value at ``key``; ``_ABSENT`` when the config has no such key (e.g. lam for ce)."""
    return OmegaConf.select(cfg, key, default=_ABSENT)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def cost_warnings(cfg: DictConfig) -> list[str]:
    """Settings that work but cost far more than users may expect."""
    stem = OmegaConf.select(cfg, "model.net.stem")
    size = OmegaConf.select(cfg, "data.size")
    if stem == "cifar" and isinstance(size, int) and size >= 128:
        factor = (size // 28) ** 2 * 8
        return [
            f"model.net.stem=cifar at data.size={size} keeps full resolution through the first "
            f"ResNet stage: roughly {factor}x the compute of the default 28x28 imagenet-stem run; "
            "stem=imagenet is the usual choice at this size"
        ]
    return []


# The domain's own rule for each setting it owns (also applied when the object is built),
# by the config key users write; run-wide settings are checked in check_config itself.
DOMAIN_CHECKS: dict[str, Callable[[object], None]] = {
    "model.num_classes": check_num_classes,
    "loss.num_classes": check_num_classes,
    "model.net.backbone": check_backbone,
    "model.net.stem": check_stem,
    "loss.lam": check_lam,
    "loss.difference": check_difference,
    "loss.label_smoothing": check_label_smoothing,
    "model.net.dropout": check_dropout,
    "data.pairing": check_pairing,
    "data.augment": check_augment,
    "data.batch_size": check_batch_size,
    "corruptions": check_corruptions,
    "grading.referable_cuts": check_cuts,
    "grading.threshold_rule": check_rule,
    "grading.target_sensitivity": check_target_sensitivity,
}


# loggers (by the end of their _target_) and the extra each needs
LOGGER_EXTRAS = {
    "WandbLogger": (("wandb",), "wandb", "logger=wandb"),
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard", "logger=tensorboard"),
}


def check_extras(cfg: DictConfig) -> None:
    """Optional packages the chosen loggers or a search need: one line saying what to install."""
    for node in (cfg.get("logger") or {}).values():
        target = str(node.get("_target_", "")) if node else ""
        for suffix, (modules, extra, feature) in LOGGER_EXTRAS.items():
            if target.endswith(suffix):
                require(modules, extra, feature)
    if cfg.get("hparams_search"):
        require("optuna", "search", "hparams_search")


def target_class(target: object) -> object:
    """The class a config's ``_target_`` names, or None when it names nothing importable."""
    if not isinstance(target, str):
        return None
    try:
        return get_class(target)
    except Exception:  # a misspelt target: instantiate reports it where it is built
        return None


def check_optimisation(cfg: DictConfig) -> None:
    """The optimiser and schedule built once on a stand-in parameter, so that torch's own
    checks (a negative lr, betas outside [0, 1), ...) are one config line before anything is
    built or trained, not a traceback from inside ``fit``."""
    import torch
    from hydra.utils import instantiate

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer: object = None
    for key in ("model.optimizer", "model.scheduler"):
        node = _value(cfg, key)
        if not isinstance(node, DictConfig):
            continue
        try:
            factory = instantiate(node)
            if key == "model.optimizer":
                optimizer = factory(params=[parameter])
            elif optimizer is not None:
                # one step too: some values are only read there (an ExponentialLR's gamma)
                scheduler = factory(optimizer=optimizer)
                optimizer.step()  # type: ignore[attr-defined]
                scheduler.step()
        except Exception as err:  # whatever torch refuses, said as it says it
            cause = err.__cause__ if err.__cause__ is not None else err
            settings = {
                k: v for k, v in OmegaConf.to_container(node).items() if not k.startswith("_")
            }
            raise ConfigError(
                key, settings, f"{node.get('_target_')} refuses it ({cause})"
            ) from None


def check_refit(cfg: DictConfig) -> None:
    """``refit_from``: null or a sweep's folder, on a run of the official split; a refit's
    folds (``data.fold=all``) are set by it alone, as training on every fold leaves nothing
    to validate on (mtcsnn.run.refit)."""
    refit_from = _value(cfg, "refit_from")
    refit = refit_from not in (_ABSENT, None)
    if refit and not (isinstance(refit_from, str) and refit_from.strip()):
        raise ConfigError("refit_from", refit_from, "it must be null or a sweep's folder")
    if refit and _value(cfg, "data.folds") not in (_ABSENT, None):
        raise ConfigError(
            "data.folds",
            _value(cfg, "data.folds"),
            "a refit trains one model on every fold of its sweep, which says how many: "
            "leave data.folds and experiment=cv out of the refit's command",
        )
    if refit and cfg.get("hparams_search"):
        raise ConfigError("refit_from", refit_from, "a search does not refit: drop one of them")
    if not refit and _value(cfg, "data.fold") == ALL:
        raise ConfigError(
            "data.fold",
            ALL,
            "training on every fold leaves no val images to choose a checkpoint on: "
            "refit_from=<a cross-validation sweep> trains that way, for the epochs its folds chose",
        )


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail later, naming the key and what is allowed."""
    check_extras(cfg)
    checks = dict(DOMAIN_CHECKS)
    data_class = target_class(_value(cfg, "data._target_"))
    if isinstance(data_class, type) and issubclass(data_class, PairDataModule):
        checks["data.size"] = data_class.check_size  # each dataset says which sizes it has
    for key, check in checks.items():
        value = _value(cfg, key)
        if value is _ABSENT:
            continue
        try:
            check(value)
        except ConfigError as err:  # the domain names its argument; users see the config key
            raise ConfigError(key, value, err.allowed) from None

    metric = _value(cfg, "optimized_metric")
    name = str(metric).removeprefix("val/")
    if metric not in (_ABSENT, None) and not (
        str(metric).startswith("val/")
        and (name in MONITORABLE or re.fullmatch(r"recall_\d+", name))
    ):
        raise ConfigError(
            "optimized_metric",
            metric,
            "it picks the checkpoint and steers searches: use a val metric: "
            + ", ".join(f"val/{m}" for m in MONITORABLE)
            + " or val/recall_<grade>",
        )
    if isinstance(metric, str):
        # a callback that watches the metric must want it the way it improves (val/loss: down)
        wanted = metric_mode(metric)
        better = "lower" if wanted == "min" else "higher"
        for callback, node in (_value(cfg, "callbacks") or {}).items():
            if isinstance(node, DictConfig) and node.get("monitor") == metric:
                mode = node.get("mode", "min")  # Lightning's default
                if mode != wanted:
                    raise ConfigError(
                        f"callbacks.{callback}.mode",
                        mode,
                        f"optimized_metric={metric} is better {better}: use {wanted} "
                        "(the default follows optimized_metric)",
                    )

    threads = _value(cfg, "threads")
    if threads not in (_ABSENT, None) and not (_is_int(threads) and threads >= 1):
        raise ConfigError("threads", threads, "it must be null (all cores) or an integer >= 1")

    seed = _value(cfg, "seed")
    if seed is not _ABSENT and not (_is_int(seed) and 0 <= seed <= MAX_SEED):
        # Lightning's seed_everything stops on it with a traceback; here it is one line
        raise ConfigError("seed", seed, f"it must be an integer from 0 to {MAX_SEED}")

    accelerator = _value(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") and not cuda_available():
        raise ConfigError(
            "trainer.accelerator",
            accelerator,
            "no CUDA GPU is available here; use trainer=cpu (or trainer.accelerator=auto)",
        )

    keep = _value(cfg, "keep_training_state")
    if keep is not _ABSENT and not isinstance(keep, bool):
        raise ConfigError("keep_training_state", keep, "it must be true or false")

    max_epochs = _value(cfg, "trainer.max_epochs")
    if max_epochs is not _ABSENT and not (_is_int(max_epochs) and max_epochs >= 1):
        raise ConfigError("trainer.max_epochs", max_epochs, "it must be an integer >= 1")
    check_refit(cfg)
    check_optimisation(cfg)  # after max_epochs: the schedule's milestones are drawn from it

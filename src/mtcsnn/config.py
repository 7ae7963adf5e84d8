"""Config helpers: OmegaConf resolvers and the checks run before any training starts."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import ConfigError


def epoch_fractions(max_epochs: int, fractions: list[float]) -> list[int]:
    """Epoch numbers at the given fractions of the run, e.g. (100, [0.5, 0.75]) -> [50, 75].

    Lets the learning-rate milestones follow ``trainer.max_epochs`` instead of being fixed numbers.
    """
    return [max(1, round(float(f) * int(max_epochs))) for f in fractions]


def run_group(task_name: str) -> str:
    """``<task_name>-<folder>``: the multirun folder in a sweep, so a sweep is one group."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    multirun = str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    folder = hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir
    return f"{task_name}-{Path(folder).name}"


def register_resolvers() -> None:
    for name, fn in (("epoch_fractions", epoch_fractions), ("run_group", run_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"model": {"lr": 1}}`` -> ``{"model.lr": 1}``; lists become tuples (hashable)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


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


def _choice(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = _value(cfg, key)
    if value is not _ABSENT and (isinstance(value, bool) or value not in allowed):
        raise ConfigError(key, value, "choose one of: " + ", ".join(map(str, allowed)))


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


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail later, naming the key and what is allowed."""
    from mtcsnn.data import IMAGE_SIZES
    from mtcsnn.data.pairing import PAIRINGS
    from mtcsnn.losses import DIFFERENCES
    from mtcsnn.models import BACKBONES, STEMS

    _choice(cfg, "model.net.backbone", tuple(BACKBONES))
    _choice(cfg, "model.net.stem", STEMS)
    _choice(cfg, "loss.difference", DIFFERENCES)
    _choice(cfg, "data.size", IMAGE_SIZES)
    _choice(cfg, "data.pairing", PAIRINGS)

    lam = _value(cfg, "loss.lam")
    if lam is not _ABSENT and not (
        isinstance(lam, (int, float))
        and not isinstance(lam, bool)
        and math.isfinite(lam)
        and lam >= 0
    ):
        raise ConfigError("loss.lam", lam, "it must be a finite number >= 0")

    batch_size = _value(cfg, "data.batch_size")
    if batch_size is not _ABSENT and not (
        _is_int(batch_size) and batch_size >= 2 and batch_size % 2 == 0
    ):
        raise ConfigError(
            "data.batch_size",
            batch_size,
            "it counts images and must be an even number >= 2 (each batch is batch_size/2 pairs)",
        )

    metric = _value(cfg, "optimized_metric")
    if metric is not _ABSENT and metric is not None and not str(metric).startswith("val/"):
        raise ConfigError(
            "optimized_metric",
            metric,
            "it picks the checkpoint and steers searches: use a val metric, e.g. val/auroc",
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

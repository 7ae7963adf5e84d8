"""Rebuild a trained model from an mtcsnn checkpoint, with the settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import MTCSNNError
from mtcsnn.models.lit_module import MTCSNNModule


class CheckpointError(MTCSNNError):
    """The file is missing, unreadable or not an mtcsnn checkpoint."""


@dataclass
class Checkpoint:
    module: MTCSNNModule  # weights loaded, in eval mode
    config: DictConfig  # the resolved config of the run that wrote the checkpoint
    epoch: int | None
    path: Path

    @property
    def image_size(self) -> int:
        return int(self.config.data.get("size", 28))


def build_module(cfg: DictConfig) -> MTCSNNModule:
    """The LightningModule of a (train) config: network, loss, optimiser and schedule."""
    return instantiate(cfg.model, loss=instantiate(cfg.loss))


# What a checkpoint's config may ask to be built: the project's own model, loss and data
# classes, and the optimisers and schedules it offers. A checkpoint is a file from someone else;
# any other ``_target_`` (``os.system``, ``builtins.exec``, ``runpy.run_path`` ...) would run
# code while the model is rebuilt, so it is refused before anything is built.
SAFE_TARGETS = frozenset(
    {
        "mtcsnn.models.MTCSNNModule",
        "mtcsnn.models.SiameseResNet",
        "mtcsnn.losses.PairCrossEntropyLoss",
        "mtcsnn.losses.MultiTaskLoss",
        "mtcsnn.losses.CoralLoss",
        "mtcsnn.losses.CornLoss",
        "mtcsnn.losses.GradeRegressionLoss",
        "mtcsnn.data.RetinaMNISTDataModule",
        "mtcsnn.data.SyntheticDataModule",
        "mtcsnn.data.FundusFolderDataModule",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.MultiStepLR",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.optim.lr_scheduler.StepLR",
        "torch.optim.lr_scheduler.ExponentialLR",
    }
)
# the parts of a saved config that are rebuilt; the rest is only read
BUILT_FROM_CHECKPOINT = ("model", "loss", "data")
# keys with a meaning to hydra.utils.instantiate: each value is checked like any other
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_convert_", "_recursive_"})


def unsafe_entry(node: object, key: str) -> str | None:
    """The first ``key=value`` under ``node`` that could run code when built, else None.

    Walks dicts and lists recursively (``_args_`` and nested nodes included): every
    ``_target_`` must be in ``SAFE_TARGETS``, no other ``_underscored_`` key is allowed, and
    no string may be an interpolation (``${...}`` would call a resolver).
    """
    if isinstance(node, dict):
        for child_key, child in node.items():
            name = f"{key}.{child_key}"
            if not isinstance(child_key, str):
                return f"{name}: keys must be strings"
            if child_key == "_target_" and not (isinstance(child, str) and child in SAFE_TARGETS):
                return f"{name}={child!r}"
            reserved = child_key.startswith("_") and child_key.endswith("_")
            if reserved and child_key not in HYDRA_KEYS:
                return f"{name}={child!r}"
            found = unsafe_entry(child, name)
            if found:
                return found
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            found = unsafe_entry(child, f"{key}[{i}]")
            if found:
                return found
    elif isinstance(node, str) and "${" in node:
        return f"{key}={node!r}"
    return None


def check_buildable(config: dict, path: Path) -> None:
    """Refuse a saved config that asks for anything but the project's own classes."""
    for section in BUILT_FROM_CHECKPOINT:
        if section not in config:
            if section == "data":
                continue  # predict and explain need no data module
            raise CheckpointError(f"{path} is not an mtcsnn checkpoint: no {section} in its config")
        found = unsafe_entry(config[section], section)
        if found:
            raise CheckpointError(
                f"{path}: refused to rebuild the model: {found} is not something mtcsnn builds "
                "(a checkpoint may only name the project's own model, loss and data classes and "
                "the optimisers and schedules it offers)"
            )


def initialise_from(module: MTCSNNModule, path: str | Path) -> None:
    """Start a new run from another run's weights (``init_from=<ckpt>``), checked as above.

    Only the weights are taken: the new run has its own schedule, epochs and output dir.
    """
    source = load_checkpoint(path)
    own, theirs = module.state_dict(), source.module.state_dict()
    differing = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    differing += [k for k in theirs if k not in own]
    if differing:
        names = ", ".join(differing[:3]) + (" ..." if len(differing) > 3 else "")
        raise CheckpointError(
            f"init_from={source.path}: its network differs from this run's ({names}); use a "
            "checkpoint of the same backbone, stem and loss head"
        )
    module.load_state_dict(theirs)


def load_checkpoints(paths: object) -> list[Checkpoint]:
    """``ckpt_path=a.ckpt`` or ``ckpt_path=[a.ckpt,b.ckpt,...]`` (an ensemble), each loaded
    as :func:`load_checkpoint`; an ensemble's members must take images of one size."""
    names = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]  # type: ignore[union-attr]
    if not names:
        raise CheckpointError("ckpt_path is an empty list: name at least one checkpoint")
    checkpoints = [load_checkpoint(name) for name in names]
    sizes = {c.image_size for c in checkpoints}
    if len(sizes) > 1:
        raise CheckpointError(
            f"the checkpoints of an ensemble take images of one size; these take {sorted(sizes)}"
        )
    return checkpoints


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load ``path`` safely (``weights_only=True``) and rebuild its model from its own config."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:  # no permission, an I/O error: the file is fine, reading is not
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # torch.load raises many kinds on a file that is not its own
        raise CheckpointError(
            f"{path} is not a checkpoint that loads safely (torch.load with weights_only=True "
            f"failed: {type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or not state.get("mtcsnn_config") or "state_dict" not in state:
        raise CheckpointError(
            f"{path} is not an mtcsnn checkpoint (it holds no mtcsnn_config and state_dict; "
            "use a .ckpt from a run's checkpoints/ folder)"
        )
    saved = state["mtcsnn_config"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} is not an mtcsnn checkpoint: mtcsnn_config is no mapping")
    check_buildable(saved, path)
    config = OmegaConf.create(saved)
    if OmegaConf.select(config, "model.net.weights") is not None:
        # the weights are in the checkpoint: no initial weights are read or downloaded
        OmegaConf.update(config, "model.net.weights", None)
    try:
        module = build_module(config)
    except Exception as err:  # only the project's own classes, with values they refuse
        raise CheckpointError(
            f"{path}: the model cannot be rebuilt from its saved config ({type(err).__name__})"
        ) from None
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit the saved model config ({err})"
        ) from None
    module.run_config = state["mtcsnn_config"]
    module.eval()
    epoch = state.get("epoch")
    return Checkpoint(module, config, int(epoch) if epoch is not None else None, path)

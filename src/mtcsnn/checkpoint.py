"""Rebuild a trained model from an mtcsnn checkpoint, with the settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import MTCSNNError
from mtcsnn.models.module import MTCSNNModule


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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load ``path`` safely (``weights_only=True``) and rebuild its model from its own config."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    config = OmegaConf.create(state["mtcsnn_config"])
    module = build_module(config)
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

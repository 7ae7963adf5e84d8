"""The shared-weight ResNet with a grade classifier and a severity-score head."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from mtcsnn.errors import MTCSNNError, check_choice, check_optional_share
from mtcsnn.losses.base import BranchOutput, check_num_classes

BACKBONES = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
STEMS = ("imagenet", "cifar")


def check_backbone(backbone: object) -> None:
    check_choice("backbone", backbone, tuple(BACKBONES))


def check_stem(stem: object) -> None:
    check_choice("stem", stem, STEMS)


def check_dropout(dropout: object) -> None:
    check_optional_share("dropout", dropout)


class WeightsError(MTCSNNError):
    """Initial weights that cannot be had or do not fit the network."""


def pretrained(backbone: str, weights: str | None) -> nn.Module:
    """torchvision's ``backbone``: random (``None``/``none``) or ImageNet weights (``imagenet``,
    downloaded once into torch's cache by torchvision's weights API)."""
    if weights in (None, "none"):
        return BACKBONES[backbone](weights=None)
    try:
        return BACKBONES[backbone](weights="DEFAULT")
    except (OSError, RuntimeError, ValueError) as err:  # no network, a broken download
        raise WeightsError(
            f"cannot get the ImageNet weights of {backbone} ({type(err).__name__}: {err}); "
            "they are downloaded once (network needed), or give a file: model.net.weights=<path>"
        ) from None


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """A torchvision-format state_dict (``resnet18().state_dict()``; ``fc.*`` ignored) from a
    file, loaded as tensors only (``weights_only=True``): it cannot run code."""
    path = Path(path).expanduser()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, unreadable or not a tensor file
        raise WeightsError(
            f"cannot load weights from {path} ({type(err).__name__}: {err})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state_dict (a dict of tensors)")
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    own = backbone.state_dict()
    for key, value in state.items():
        if key in own and getattr(value, "shape", None) != own[key].shape:
            raise WeightsError(
                f"{path}: {key} has shape {tuple(value.shape)}, this network's has "
                f"{tuple(own[key].shape)} (another backbone or stem?)"
            )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit the {type(backbone).__name__}: "
            + "; ".join(
                f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )
    backbone.load_state_dict(state)


class SiameseResNet(nn.Module):
    """One torchvision ResNet that serves both Siamese branches.

    ``weights``: ``None``/``none`` (random), ``imagenet`` (torchvision's ImageNet weights) or
    the path of a torchvision-format state_dict of the backbone.

    ``stem="imagenet"`` keeps torchvision's 7x7/2 conv and max-pool (as the MTCSNN paper did);
    ``stem="cifar"`` uses a 3x3/1 conv and no max-pool, the MedMNIST benchmark's ResNet for
    28x28 inputs (about 8x more compute). Inputs are RGB floats in [0, 1]; the normalisation
    lives in the model, so a checkpoint carries it.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        stem: str = "imagenet",
        num_classes: int = 5,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        channels_last: bool = False,
        weights: str | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        check_stem(stem)
        check_dropout(dropout)
        check_num_classes(num_classes)
        from_file = weights not in (None, "none", "imagenet")
        net = pretrained(backbone, None if from_file else weights)
        if stem == "cifar":  # a new 3x3 conv: random even with ImageNet weights
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        num_features = net.fc.in_features
        net.fc = nn.Identity()
        if from_file:
            load_backbone_weights(net, str(weights))
        self.backbone = net
        self.num_features = num_features
        # on the features both heads read; no parameters, so checkpoints are unchanged
        self.dropout = nn.Dropout(dropout or 0.0)
        self.classifier = nn.Linear(num_features, num_classes)
        self.regressor = nn.Linear(num_features, 1)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        # NHWC convolutions: faster with tensor cores (GPU, bf16); usually not on CPU
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> BranchOutput:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.dropout(self.backbone((images - self.mean) / self.std))
        return BranchOutput(self.classifier(features), self.regressor(features).squeeze(-1))

    def forward_pair(
        self, images_a: torch.Tensor, images_b: torch.Tensor
    ) -> tuple[BranchOutput, BranchOutput]:
        """Both branches in one pass through the shared backbone (one batch of 2k images)."""
        out = self(torch.cat([images_a, images_b]))
        n = images_a.shape[0]
        return (
            BranchOutput(out.logits[:n], out.score[:n]),
            BranchOutput(out.logits[n:], out.score[n:]),
        )

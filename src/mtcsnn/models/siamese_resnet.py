"""The shared-weight ResNet with a grade classifier and a severity-score head."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from mtcsnn.errors import check_choice
from mtcsnn.losses.base import BranchOutput

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


class SiameseResNet(nn.Module):
    """One torchvision ResNet (``weights=None``) that serves both Siamese branches.

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
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        check_stem(stem)
        net = BACKBONES[backbone](weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.num_features = num_features
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
        features = self.backbone((images - self.mean) / self.std)
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

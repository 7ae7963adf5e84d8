"""The network (a shared-weight ResNet with two heads) and the LightningModule that trains it."""

from mtcsnn.losses.base import BranchOutput
from mtcsnn.models.build import build_from_spec
from mtcsnn.models.lit_module import MTCSNNModule
from mtcsnn.models.siamese_resnet import BACKBONES, STEMS, SiameseResNet
from mtcsnn.models.spec import ModelSpec, SpecError, parse_spec

__all__ = [
    "BACKBONES",
    "STEMS",
    "BranchOutput",
    "MTCSNNModule",
    "ModelSpec",
    "SiameseResNet",
    "SpecError",
    "build_from_spec",
    "parse_spec",
]

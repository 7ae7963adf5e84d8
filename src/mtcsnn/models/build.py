"""The LightningModule a model spec describes, built by plain Python (no ``_target_``)."""

from __future__ import annotations

import torch

from mtcsnn.models.lit_module import MTCSNNModule
from mtcsnn.models.siamese_resnet import SiameseResNet
from mtcsnn.models.spec import LOSSES, TAKES_GRADES, ModelSpec, SpecError


def no_training(*args: object, **kwargs: object) -> torch.optim.Optimizer:
    """The optimiser of a model rebuilt from a spec: it is evaluated, never trained further."""
    raise SpecError("a model rebuilt from a checkpoint's spec is not trained further")


def build_from_spec(spec: ModelSpec) -> MTCSNNModule:
    """The LightningModule a spec describes (random weights; load the checkpoint's into it)."""
    net = SiameseResNet(
        backbone=spec.backbone,
        stem=spec.stem,
        num_classes=spec.grades,
        mean=spec.mean,
        std=spec.std,
        weights=None,  # the weights come from the checkpoint: nothing read or downloaded
        dropout=spec.dropout,
    )
    constants = dict(spec.head.constants)
    if spec.head.kind in TAKES_GRADES:
        constants["grades"] = spec.grades
    module = MTCSNNModule(
        net=net,
        loss=LOSSES[spec.head.kind](**constants),
        optimizer=no_training,
        num_classes=spec.grades,
    )
    module.spec = spec
    return module

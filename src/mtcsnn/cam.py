"""Grad-CAM of the predicted grade, computed by Captum's ``LayerGradCam``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from mtcsnn.models import SiameseResNet

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_sizes(net: SiameseResNet, size: int) -> dict[str, int]:
    """Spatial side of each ResNet stage's output for a ``size`` x ``size`` input."""
    sides: dict[str, int] = {}
    hooks = [
        getattr(net.backbone, name).register_forward_hook(
            lambda _m, _i, out, name=name: sides.__setitem__(name, out.shape[-1])
        )
        for name in RESNET_STAGES
    ]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size, device=net.mean.device))
    finally:
        for hook in hooks:
            hook.remove()
    return sides


def cam_layer(net: SiameseResNet, size: int, layer: str = "auto", min_side: int = 4) -> nn.Module:
    """The stage Grad-CAM looks at. ``auto``: the deepest stage whose map is >= ``min_side``.

    Grad-CAM on the last stage is the usual choice, but a 28x28 input leaves only a 1x1 map
    there with the torchvision stem, which cannot localise anything.
    """
    if layer == "auto":
        sides = stage_sizes(net, size)
        wide = [name for name in RESNET_STAGES if sides[name] >= min_side]
        layer = wide[-1] if wide else RESNET_STAGES[0]
    if layer not in RESNET_STAGES:
        raise ValueError(f"unknown layer {layer!r}; choose auto or one of {RESNET_STAGES}")
    return getattr(net.backbone, layer)


def grad_cam(
    class_scores: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
) -> torch.Tensor:
    """Grad-CAM maps (N x H x W, input size, scaled to [0, 1]) for class ``target`` per image.

    ``class_scores`` maps images to (N, classes) scores, e.g. ``MTCSNNModule.class_scores``.
    """
    method = LayerGradCam(class_scores, layer)
    attributions = method.attribute(images, target=target, relu_attributions=True)
    maps = LayerAttribution.interpolate(attributions, images.shape[-2:], "bilinear")
    maps = maps.squeeze(1).detach()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)

"""Grad-CAM of the predicted grade, computed by Captum's ``LayerGradCam``, as PNG overlays."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mtcsnn.errors import check_choice, require
from mtcsnn.inference.batch import non_finite_reason
from mtcsnn.inference.images import expand_inputs, read_all
from mtcsnn.models import MTCSNNModule, SiameseResNet
from mtcsnn.writing import write_atomic

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
    check_choice("layer", layer, ("auto", *RESNET_STAGES))
    if layer == "auto":
        sides = stage_sizes(net, size)
        wide = [name for name in RESNET_STAGES if sides[name] >= min_side]
        layer = wide[-1] if wide else RESNET_STAGES[0]
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
    require("captum", "explain", "Grad-CAM")
    from captum.attr import LayerAttribution, LayerGradCam

    method = LayerGradCam(class_scores, layer)
    attributions = method.attribute(images, target=target, relu_attributions=True)
    maps = LayerAttribution.interpolate(attributions, images.shape[-2:], "bilinear")
    maps = maps.squeeze(1).detach()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def overlay_png(image: torch.Tensor, cam: torch.Tensor, title: str, path: Path) -> None:
    """The image and the image with its Grad-CAM map on top, side by side."""
    from matplotlib.figure import Figure

    rgb = image.permute(1, 2, 0).cpu().numpy()
    fig = Figure(figsize=(5, 2.8))
    axes = fig.subplots(1, 2)
    axes[0].imshow(rgb)
    axes[1].imshow(rgb)
    axes[1].imshow(cam.cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for ax in axes:
        ax.axis("off")
    # a "$" in a file name is shown as itself, not read as the start of a formula (an
    # unfinished one stops the drawing)
    fig.suptitle(title.replace("$", r"\$"), fontsize=9)
    fig.tight_layout()
    # whole or not at all, and never through a symlink planted at the overlay's name
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/"))[-120:]


def unique_path(out_dir: Path, name: str, taken: set[Path]) -> Path:
    """``<name>_gradcam.png``, numbered when another input already gave that name.

    ``eye.png`` and ``eye.jpg`` keep their suffixes; names that differ only in punctuation
    (``a b.png``, ``a_b.png``) map to one stem and get ``_2``, ``_3``, ...
    """
    stem = file_stem(name)
    path, number = out_dir / f"{stem}_gradcam.png", 1
    # lexists: a name held by a link (even one to nothing) is taken too, and left alone
    while path in taken or os.path.lexists(path):
        number += 1
        path = out_dir / f"{stem}_{number}_gradcam.png"
    taken.add(path)
    return path


@dataclass
class Explained:
    written: list[Path] = field(default_factory=list)  # one overlay per image
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    found: int = 0  # images found in the inputs
    skipped: int = 0  # images beyond max_images


def explain_inputs(
    module: MTCSNNModule,
    inputs: Iterable[str],
    image_size: int,
    device: torch.device,
    out_dir: Path,
    layer: str = "auto",
    max_images: int = 64,
    progress: bool = True,
) -> Explained:
    """A Grad-CAM overlay of the predicted grade for each of the first ``max_images`` images."""
    module = module.to(device).eval()
    target_layer = cam_layer(module.net, image_size, layer)
    sources, failures = expand_inputs([str(i) for i in inputs])
    result = Explained(failures=failures, found=len(sources))
    result.skipped = max(0, len(sources) - max_images)
    taken: set[Path] = set()
    for source, image, reason in read_all(sources[:max_images], image_size, progress=progress):
        if image is None:
            result.failures.append((source.name, reason or "unreadable"))
            continue
        x = image.unsqueeze(0).to(device).float().div(255)
        with torch.no_grad():
            probs = module.probabilities(module.net(x))[0]
        reason = non_finite_reason(probs, "not explained")
        if reason:  # argmax of NaN is grade 0: no overlay titled with a grade it was not given
            result.failures.append((source.name, reason))
            continue
        grade = int(probs.argmax())
        cam = grad_cam(module.class_scores, x, torch.tensor([grade], device=device), target_layer)
        path = unique_path(out_dir, source.name, taken)
        title = f"{Path(source.name).name}\ngrade {grade} (p={probs[grade]:.2f})"
        overlay_png(x[0], cam[0], title, path)
        result.written.append(path)
    return result

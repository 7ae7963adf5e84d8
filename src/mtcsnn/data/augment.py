"""Batch augmentations that run on the training device, each image with its own parameters."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from mtcsnn.errors import check_choice

AUGMENTATIONS = ("none", "flip", "dihedral", "strong", "strong_erase", "strong_corrupt")
# strong_corrupt: the share of images given a MedMNIST-C corruption
CORRUPTED_SHARE = 0.5


def check_augment(kind: object) -> None:
    check_choice("augment", kind, AUGMENTATIONS)


def random_dihedral(images: torch.Tensor, flips_only: bool = False) -> torch.Tensor:
    """Per-image random flips (and, unless ``flips_only``, transposes) of an NCHW batch.

    Horizontal flip, vertical flip and transpose together give all 8 symmetries of the square
    (rotations by 90 degrees included); all are label-preserving for a fundus photograph.
    """
    n = images.shape[0]

    def coin() -> torch.Tensor:
        return (torch.rand(n, device=images.device) < 0.5).view(n, 1, 1, 1)

    images = torch.where(coin(), images.flip(-1), images)
    images = torch.where(coin(), images.flip(-2), images)
    if not flips_only:
        images = torch.where(coin(), images.transpose(-1, -2), images)
    return images


def random_affine(
    images: torch.Tensor,
    degrees: float = 15.0,
    scale: tuple[float, float] = (0.9, 1.1),
    shift: float = 0.07,
) -> torch.Tensor:
    """Per-image rotation (+-``degrees``), scale and shift (+-``shift`` of the side, 2 px at 28),
    bilinear, black outside: one ``grid_sample`` for the whole batch.

    Written on PyTorch's own ``affine_grid``/``grid_sample``: kornia's ``RandomAffine`` does
    the same at 2.5x the time on a CPU (docs: Speed).
    """
    n, device = images.shape[0], images.device
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(degrees)
    zoom = torch.empty(n, device=device).uniform_(*scale)
    offset = (torch.rand(n, 2, device=device) * 2 - 1) * (2 * shift)  # grid units span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.cache
def _kornia_jitter(strength: float) -> torch.nn.Module:
    from kornia.augmentation import ColorJitter  # kornia loads only when an augment needs it

    return ColorJitter(strength, strength, strength, 0.0, p=1.0)


@functools.cache
def _kornia_erasing() -> torch.nn.Module:
    from kornia.augmentation import RandomErasing

    return RandomErasing(p=0.5)


def colour_jitter(images: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Per-image brightness, contrast and saturation, each x U(1 - strength, 1 + strength)
    (kornia's ``ColorJitter``), clipped to [0, 1]."""
    return _kornia_jitter(strength)(images).clamp(0, 1)


def random_erasing(images: torch.Tensor) -> torch.Tensor:
    """Per image, with p 0.5, one rectangle of 2-33% of the area (aspect 0.3-3.3) set to 0:
    kornia's ``RandomErasing`` with the defaults of Zhong et al. (2020) and torchvision."""
    return _kornia_erasing()(images)


def random_corruption(images: torch.Tensor, share: float = CORRUPTED_SHARE) -> torch.Tensor:
    """Per image, with p ``share``, one of MedMNIST-C's RetinaMNIST corruptions at a random
    severity (:mod:`mtcsnn.data.corruptions`; MedMNIST-C's own augmentation draws them so).
    The corruptions work on uint8 images on the host: the chosen images go there and back."""
    from mtcsnn.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt

    n = images.shape[0]
    chosen = torch.nonzero(torch.rand(n) < share).flatten()
    if not len(chosen):
        return images
    kinds = torch.randint(len(CORRUPTIONS), (len(chosen),))
    severities = torch.randint(len(SEVERITIES), (len(chosen),))
    seed = int(torch.randint(2**31 - 1, (1,)))  # the noise follows the run's seed
    picked = images[chosen.to(images.device)]
    as_uint8 = (picked.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = as_uint8.copy()
    for k in kinds.unique().tolist():
        for s in severities[kinds == k].unique().tolist():
            where = ((kinds == k) & (severities == s)).numpy()
            out[where] = corrupt(as_uint8[where], CORRUPTIONS[k], SEVERITIES[s], seed + k * 5 + s)
    corrupted = torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255
    images = images.clone()
    images[chosen.to(images.device)] = corrupted
    return images


def augment(images: torch.Tensor, kind: str) -> torch.Tensor:
    """``none``, ``flip``, ``dihedral`` (flips and 90-degree turns), ``strong`` (dihedral,
    then a small rotation, scale and shift, then colour jitter) or ``strong_erase`` (strong,
    then random erasing) or ``strong_corrupt`` (strong, then MedMNIST-C's corruptions on half
    the images), on a float batch in [0, 1]."""
    check_augment(kind)
    if kind == "flip":
        return random_dihedral(images, flips_only=True)
    if kind == "dihedral":
        return random_dihedral(images)
    if kind == "strong":
        return colour_jitter(random_affine(random_dihedral(images)))
    if kind == "strong_erase":
        return random_erasing(augment(images, "strong"))
    if kind == "strong_corrupt":
        return random_corruption(augment(images, "strong"))
    return images

"""Batch augmentations that run on the training device."""

from __future__ import annotations

import torch

from mtcsnn.errors import check_choice

AUGMENTATIONS = ("none", "flip", "dihedral")


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


def augment(images: torch.Tensor, kind: str) -> torch.Tensor:
    check_augment(kind)
    if kind == "flip":
        return random_dihedral(images, flips_only=True)
    if kind == "dihedral":
        return random_dihedral(images)
    return images

"""Fundus-like photographs written to a folder with a labels.csv, as a user's data set."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image


def fundus(width: int, height: int, radius: float, level: int = 150, seed: int = 0) -> np.ndarray:
    """A bright disc of ``radius`` pixels centred in a black frame (cut where it is larger)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < radius**2
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[disc] = (level, level // 2, level // 4)
    return image + rng.integers(0, 8, image.shape, dtype=np.uint8)  # sensor noise in the border


def photo_folder(root, count: int = 40, size=(96, 64)) -> list[tuple[str, int]]:
    (root / "photos").mkdir(parents=True)
    rows = []
    for i in range(count):
        grade = i % 5
        name = f"photos/eye_{i:02d}.png"
        image = fundus(*size, radius=size[1] * 0.6, level=60 + 40 * grade, seed=i)
        Image.fromarray(image).save(root / name)
        rows.append((name, grade))
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "grade"), *rows])
    return rows

"""A small ordinal toy dataset made in memory, for smoke runs that need no download."""

from __future__ import annotations

import torch

from mtcsnn.data.datamodule import PairDataModule

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def make_synthetic(
    num_images: int, size: int = 28, num_classes: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fundus-like discs whose brightness and number of bright spots grow with the grade.

    Returns ``(uint8 N x 3 x size x size, int64 N)``; grades cycle so every class is present.
    """
    g = torch.Generator().manual_seed(seed)
    grades = torch.arange(num_images) % num_classes
    grades = grades[torch.randperm(num_images, generator=g)]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.9).float()
    level = 0.25 + 0.1 * grades.float().view(-1, 1, 1, 1)
    tint = torch.tensor([1.0, 0.5, 0.3]).view(1, 3, 1, 1)
    images = level * tint * disc + 0.08 * torch.randn(num_images, 3, size, size, generator=g)
    for i, grade in enumerate(grades.tolist()):
        for _ in range(3 * grade):  # "lesions": more spots at higher grades
            y, x = torch.randint(size // 5, size - size // 5, (2,), generator=g).tolist()
            images[i, :2, y, x] += 0.6
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, grades


class SyntheticDataModule(PairDataModule):
    """Toy ordinal data with ``num_train``/``num_val``/``num_test`` images of ``size`` pixels."""

    def __init__(
        self,
        num_train: int = 200,
        num_val: int = 50,
        num_test: int = 50,
        size: int = 28,
        data_seed: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.check_size(size)
        self.num_images = {"train": num_train, "val": num_val, "test": num_test}
        self.size = size
        self.data_seed = data_seed

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        seed = self.data_seed * 3 + SPLIT_OFFSETS[split]
        return make_synthetic(self.num_images[split], self.size, seed=seed)

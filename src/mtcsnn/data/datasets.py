"""In-memory datasets indexed by whole batches, so no per-image Python work runs per step."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class PairDataset(Dataset):
    """Training pairs: indexed by a ``(k, 2)`` tensor of image indices, returns a batch dict."""

    def __init__(self, images: torch.Tensor, grades: torch.Tensor) -> None:
        self.images, self.grades = images, grades

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        # the sampler's indices go where the images are (one small copy when they sit on a GPU)
        pairs = pairs.to(self.images.device, non_blocking=True)
        index_a, index_b = pairs[:, 0], pairs[:, 1]
        grade_a, grade_b = self.grades[index_a], self.grades[index_b]
        return {
            "image_a": self.images[index_a],
            "image_b": self.images[index_b],
            "grade_a": grade_a,
            "grade_b": grade_b,
            "diff": grade_a - grade_b,  # signed ordinal difference
            "index_a": index_a,
            "index_b": index_b,
        }


class ImageDataset(Dataset):
    """Single images for evaluation: indexed by a 1-d tensor of indices, returns a batch dict
    whose ``index`` is each image's id (``ids``; by default its position)."""

    def __init__(
        self, images: torch.Tensor, grades: torch.Tensor, ids: torch.Tensor | None = None
    ) -> None:
        self.images, self.grades = images, grades
        self.ids = ids if ids is not None else torch.arange(len(grades), device=grades.device)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "grade": self.grades[index], "index": self.ids[index]}

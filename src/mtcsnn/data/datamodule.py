"""The data module shared by all datasets: pairs for training, single images to evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mtcsnn.data.augment import augment, check_augment
from mtcsnn.data.datasets import ImageDataset, PairDataset
from mtcsnn.data.folds import ALL, check_folds, fold_split
from mtcsnn.data.pairing import PairSampler, check_pairing
from mtcsnn.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
# A split up to this size is copied once to the training device (a GPU), so that a step
# gathers its images there instead of copying them from the host; RetinaMNIST is 2.5 MB.
RESIDENT_MAX_BYTES = 2 * 1024**3


# the splits every run scores (AUROC, and val chooses the checkpoint): each needs images of at
# least this many grades, as one-vs-rest AUROC is undefined on a split of one grade
SCORED_SPLITS = ("val", "test")
MIN_GRADES = 2


def check_scorable(
    grades_of: dict[str, Sequence[int] | np.ndarray | torch.Tensor], where: str, advice: str
) -> None:
    """A DataError when val or test is too small to score or to choose a checkpoint on: it
    must hold images of at least two grades (else AUROC is undefined and every epoch ties).

    ``grades_of``: each split's grades; ``where`` names the data; ``advice`` says what to do.
    """
    for split in SCORED_SPLITS:
        grades = np.asarray(grades_of.get(split, []), dtype=np.int64).reshape(-1)
        present = np.unique(grades)
        if len(present) >= MIN_GRADES:
            continue
        holds = f"{len(grades)} image{'s' if len(grades) != 1 else ''}"
        if len(present):
            holds += f", all of grade {int(present[0])}"
        raise DataError(
            f"{where}: the {split} split holds {holds}: too few to score"
            f"{' or to choose a checkpoint on' if split == 'val' else ''}; val and test each "
            f"need images of at least {MIN_GRADES} grades for AUROC. {advice}"
        )


def check_batch_size(batch_size: object) -> None:
    if not (
        isinstance(batch_size, int)
        and not isinstance(batch_size, bool)
        and batch_size >= 2
        and batch_size % 2 == 0
    ):
        raise ConfigError(
            "batch_size",
            batch_size,
            "it counts images and must be an even number >= 2 (each batch is batch_size/2 pairs)",
        )


class PairDataModule(pl.LightningDataModule):
    """Holds each split once as a uint8 NCHW tensor; subclasses say how to load a split.

    Training batches are ``batch_size // 2`` pairs from :class:`PairSampler`; val and test
    batches hold every image once, in order. Images become floats in [0, 1] (and are augmented
    during training) after they reach the device, in :meth:`on_after_batch_transfer`. On a GPU,
    each split that fits :data:`RESIDENT_MAX_BYTES` is uploaded once and batches are gathered
    on the device (:meth:`split_on_device`).

    With ``folds`` (K-fold cross-validation, :mod:`mtcsnn.data.folds`) the train and val splits
    are pooled, fold ``fold`` becomes val and the others train; test stays as it is. With
    ``fold="all"`` (a refit) the whole pool trains, and val is the pool too: a refit never
    validates (its val figures are its cross-validation's out-of-fold ones).
    ``ids[split]`` names each image of a split: its position in that split, or in a CV run its
    position in the pool (train images first, then val); predictions files call it ``index``.
    """

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        augment: str = "none",
        pairing: str = "random",
        seed: int = 0,
        num_workers: int = 0,
        folds: int | None = None,
        fold: int | str = 0,
        fold_seed: int = 0,
    ) -> None:
        super().__init__()
        check_batch_size(batch_size)
        check_augment(augment)
        check_pairing(pairing)
        check_folds(folds, fold)
        self.folds, self.fold, self.fold_seed = folds, fold, fold_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.augment = augment
        self.pairing = pairing
        self.seed = seed
        self.num_workers = num_workers
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ids: dict[str, torch.Tensor] = {}
        self._resident: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def check_size(cls, size: object) -> None:
        """The image sizes this data can give: any side of at least 8 pixels unless it says."""
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 8):
            raise ConfigError("size", size, "it must be a whole number of pixels >= 8")

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images uint8 N x 3 x H x W, grades int64 N)`` for one split."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if all(split in self.splits for split in SPLITS):
            return
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = self.load_split(split)
        self.ids = {split: torch.arange(len(self.splits[split][1])) for split in SPLITS}
        if self.folds is not None:
            self._fold_train_and_val()
        check_scorable(
            {split: grades for split, (_, grades) in self.splits.items()},
            type(self).__name__,
            "Use more val and test images.",
        )

    def _fold_train_and_val(self) -> None:
        """Fold ``fold`` of the pooled train and val images becomes val, the rest train."""
        (train_images, train_grades), (val_images, val_grades) = (
            self.splits["train"],
            self.splits["val"],
        )
        images, grades = (
            torch.cat([train_images, val_images]),
            torch.cat([train_grades, val_grades]),
        )
        if self.fold == ALL:
            train = val = torch.arange(len(grades))
        else:
            train, val = (
                torch.from_numpy(positions)
                for positions in fold_split(grades.numpy(), self.folds, self.fold, self.fold_seed)
            )
        self.splits["train"] = (images[train], grades[train])
        self.splits["val"] = (images[val], grades[val])
        self.ids["train"], self.ids["val"] = train, val

    def _rank(self) -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside data-parallel training."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def split_on_device(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split where its batches are gathered: the training device when the split fits
        and no worker processes load it (they cannot hand out GPU tensors), else the host."""
        images, grades = self.splits[split]
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if (
            device is None
            or device.type == "cpu"
            or self.num_workers > 0
            or images.numel() * images.element_size() > RESIDENT_MAX_BYTES
        ):
            return images, grades
        if (split, device) not in self._resident:
            self._resident[(split, device)] = (images.to(device), grades.to(device))
        return self._resident[(split, device)]

    def train_dataloader(self) -> DataLoader:
        images, grades = self.split_on_device("train")
        rank, world_size = self._rank()
        sampler = PairSampler(  # draws pairs on the host, from the host's copy of the grades
            len(images),
            self.batch_size // 2,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            strategy=self.pairing,
            grades=self.splits["train"][1],
        )
        return self._loader(PairDataset(images, grades), sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        images, grades = self.split_on_device(split)
        # Each process evaluates its own contiguous share, so every image is seen exactly once
        # (no padding duplicates); metrics are summed over processes by torchmetrics.
        rank, world_size = self._rank()
        share = torch.arange(len(images), device=images.device).tensor_split(world_size)[rank]
        batches = list(share.split(self.eval_batch_size))
        ids = self.ids.get(split, torch.arange(len(grades))).to(images.device)
        return self._loader(ImageDataset(images, grades, ids), batches)

    def _loader(self, dataset: Any, sampler: Any) -> DataLoader:
        # The sampler yields whole batches of indices and the dataset indexes them at once,
        # hence batch_size=None (no collation).
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        training = self.trainer is not None and self.trainer.training
        for key in ("image", "image_a", "image_b"):
            if key in batch:
                images = batch[key].float().div_(255)
                batch[key] = augment(images, self.augment) if training else images
        return batch

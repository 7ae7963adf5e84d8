"""RetinaMNIST through the ``medmnist`` package: official splits, any MedMNIST+ size."""

from __future__ import annotations

from pathlib import Path

import medmnist
import torch

from mtcsnn.data.datamodule import PairDataModule
from mtcsnn.errors import DataError

IMAGE_SIZES = (28, 64, 128, 224)
DATA_DIR_ENV = "MTCSNN_DATA_DIR"


def npz_name(size: int) -> str:
    """File name medmnist uses: ``retinamnist.npz`` at 28, ``retinamnist_64.npz`` and so on."""
    return "retinamnist.npz" if size == 28 else f"retinamnist_{size}.npz"


class RetinaMNISTDataModule(PairDataModule):
    """RetinaMNIST (5 DR grades) at ``size`` 28/64/128/224, read from ``root``.

    With ``download=True`` a missing file is fetched by ``medmnist``; a file already in ``root``
    is used as it is, so a folder holding ``retinamnist.npz`` works with no network.
    """

    def __init__(self, root: str, size: int = 28, download: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if size not in IMAGE_SIZES:
            raise ValueError(f"size must be one of {IMAGE_SIZES}, got {size}")
        self.root = Path(root).expanduser()
        self.size = size
        self.download = download

    @property
    def path(self) -> Path:
        return self.root / npz_name(self.size)

    def prepare_data(self) -> None:
        if self.path.exists():
            return
        if not self.download:
            raise DataError(self._missing_message("download is off (data.download=false)"))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            medmnist.RetinaMNIST(split="train", root=str(self.root), size=self.size, download=True)
        except (OSError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(self._missing_message(f"the download failed ({reason})")) from None

    def _missing_message(self, why: str) -> str:
        return (
            f"RetinaMNIST file {self.path.name} not found in {self.root} and {why}. "
            f"Put {self.path.name} in a folder and set {DATA_DIR_ENV}=<folder> "
            "(or data.root=<folder>)."
        )

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()
        dataset = medmnist.RetinaMNIST(split=split, root=str(self.root), size=self.size)
        images = torch.from_numpy(dataset.imgs).permute(0, 3, 1, 2).contiguous()
        grades = torch.from_numpy(dataset.labels).reshape(-1).long()
        return images, grades

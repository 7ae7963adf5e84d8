"""RetinaMNIST through the ``medmnist`` package: official splits, any MedMNIST+ size."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import BinaryIO

import medmnist
import numpy as np
import torch

from mtcsnn.data.datamodule import SPLITS, PairDataModule
from mtcsnn.data.untrusted import NpzError, UnreadableFile, check_npz, open_regular
from mtcsnn.errors import DataError, check_choice

IMAGE_SIZES = (28, 64, 128, 224)
DATA_DIR_ENV = "MTCSNN_DATA_DIR"
# what the module reads of the file; together bounded by MAX_NPZ_BYTES decompressed
ARRAYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))


def npz_name(size: int) -> str:
    """File name medmnist uses: ``retinamnist.npz`` at 28, ``retinamnist_64.npz`` and so on."""
    return "retinamnist.npz" if size == 28 else f"retinamnist_{size}.npz"


class RetinaMNISTDataModule(PairDataModule):
    """RetinaMNIST (5 DR grades) at ``size`` 28/64/128/224, read from ``root``.

    With ``download=True`` a missing file is fetched by ``medmnist``; a file already in ``root``
    is used as it is, so a folder holding ``retinamnist.npz`` works with no network.
    """

    def __init__(
        self,
        root: str,
        size: int = 28,
        download: bool = True,
        verify_md5: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.check_size(size)
        self.root = Path(root).expanduser()
        self.size = size
        self.download = download
        self.verify_md5 = verify_md5
        self._checked = False

    @classmethod
    def check_size(cls, size: object) -> None:
        check_choice("size", size, IMAGE_SIZES)  # the sizes MedMNIST+ publishes

    @property
    def path(self) -> Path:
        return self.root / npz_name(self.size)

    def prepare_data(self) -> None:
        try:
            self.path.stat()
            return
        except FileNotFoundError:
            pass
        except OSError as err:  # a folder that cannot be searched, an I/O error
            raise DataError(self._unreadable(err)) from None
        if not self.download:
            raise DataError(self._missing_message("download is off (data.download=false)"))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            medmnist.RetinaMNIST(split="train", root=str(self.root), size=self.size, download=True)
        except (OSError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(self._missing_message(f"the download failed ({reason})")) from None

    def _unreadable(self, err: OSError) -> str:
        return f"cannot read {self.path}: {err.strerror or err}"

    def _missing_message(self, why: str) -> str:
        return (
            f"RetinaMNIST file {self.path.name} not found in {self.root} and {why}. "
            f"Put {self.path.name} in a folder and set {DATA_DIR_ENV}=<folder> "
            "(or data.root=<folder>)."
        )

    def check_file(self) -> None:
        """One clear DataError for a file that is altered, truncated or not RetinaMNIST."""
        if self._checked:
            return
        if self.verify_md5:
            key = "MD5" if self.size == 28 else f"MD5_{self.size}"
            expected = medmnist.INFO["retinamnist"][key]
            try:
                digest = self._md5()
            except OSError as err:  # no read permission, a folder of that name, ...
                raise DataError(self._unreadable(err)) from None
            if digest != expected:
                raise DataError(
                    f"{self.path}: MD5 {digest} is not the official {expected} (a truncated or "
                    "altered file). Delete it to download it again, or set "
                    "data.verify_md5=false for a file made on purpose."
                )
        try:
            with self._open() as f:
                # from the headers: all the arrays together are bounded before any is read
                contents = check_npz(f, ARRAYS)
                labels = {
                    s: self._read(f, f"{s}_labels") for s in SPLITS if f"{s}_labels" in contents
                }
        except UnreadableFile as err:
            raise DataError(self._unreadable(err)) from None
        except NpzError as err:
            raise DataError(f"{self.path}: {err}") from None
        except (PermissionError, IsADirectoryError) as err:
            raise DataError(self._unreadable(err)) from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{self.path} cannot be read as a .npz file ({err})") from None
        missing = [
            f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in contents
        ]
        if missing:
            raise DataError(f"{self.path} lacks {', '.join(missing)} (it holds {sorted(contents)})")
        for split in SPLITS:
            shape, dtype = contents[f"{split}_images"]
            wanted = (self.size, self.size, 3)
            if len(shape) != 4 or tuple(shape[1:]) != wanted or dtype != np.uint8:
                raise DataError(
                    f"{self.path}: {split}_images is {dtype} {shape}, expected uint8 "
                    f"(N, {self.size}, {self.size}, 3) for data.size={self.size}"
                )
            grades = labels[split].reshape(-1)
            if len(grades) != shape[0]:
                raise DataError(
                    f"{self.path}: {split}_labels has {len(grades)} entries for {shape[0]} images"
                )
            whole = np.issubdtype(grades.dtype, np.integer) or (
                np.issubdtype(grades.dtype, np.floating)
                and bool(np.isfinite(grades).all())
                and bool((grades == np.round(grades)).all())
            )
            if not whole:
                raise DataError(
                    f"{self.path}: {split}_labels holds values that are not whole grades "
                    f"({grades.dtype}; NaN, infinite or fractional); RetinaMNIST grades are 0-4"
                )
            if grades.size and (grades.min() < 0 or grades.max() > 4):
                raise DataError(
                    f"{self.path}: {split}_labels holds grades {int(grades.min())}.."
                    f"{int(grades.max())}; RetinaMNIST grades are 0-4"
                )
        self._checked = True

    def _open(self) -> BinaryIO:
        """The file, opened only if it is a regular file (a FIFO would block the read)."""
        return open_regular(self.path)

    def _md5(self) -> str:
        digest = hashlib.md5()
        with self._open() as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @staticmethod
    def _read(f: BinaryIO, key: str) -> np.ndarray:
        f.seek(0)
        with np.load(f, allow_pickle=False) as npz:
            return npz[key]

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()
        self.check_file()
        keys = (f"{split}_images", f"{split}_labels")
        try:
            with self._open() as f:
                check_npz(f, ARRAYS)  # the file checked may have been replaced since
                imgs, labels = (self._read(f, key) for key in keys)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{self.path} cannot be read as a .npz file ({err})") from None
        images = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        grades = torch.from_numpy(labels).reshape(-1).long()
        return images, grades

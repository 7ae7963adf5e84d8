"""Reading images for prediction: files, folders and MedMNIST ``.npz`` files.

Each image is prepared by :func:`mtcsnn.data.fundus.prepare_image` (the disc found and cropped
to, padded square, resized to the model's input size), as the folder data module prepares its
training photographs. An image that already has the model's size is left untouched, so images
taken out of the dataset give exactly the dataset's pixels.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtcsnn.data.fundus import array_to_image, open_photo, prepare_image, to_uint8
from mtcsnn.data.untrusted import (
    MAX_IMAGE_FILE_BYTES,
    MAX_NPZ_BYTES,
    check_npz,
    file_problem,
    npz_headers,
    open_regular,
)

__all__ = [
    "ImageReader",
    "ImageSource",
    "expand_inputs",
    "npz_headers",
    "prepare_image",
    "read_all",
    "to_uint8",
]

log = logging.getLogger(__name__)
SMALL_MODEL = 32  # input side up to which grading a camera photograph gets a warning
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
# the arrays of an .npz are decompressed whole: more than this together is refused, not read
MAX_NPZ_ARRAY_BYTES = MAX_NPZ_BYTES


@dataclass
class ImageSource:
    """One image to read: a file, or entry ``index`` of array ``key`` in an ``.npz`` file."""

    path: Path
    key: str | None = None
    index: int | None = None

    @property
    def name(self) -> str:
        path = shown(self.path)
        return path if self.key is None else f"{path}:{self.key}[{self.index}]"


def shown(path: Path | str) -> str:
    """A path as text for logs and CSVs; bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 tensor, 3 x H x W, as the data modules hold images."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def input_list(inputs: object) -> list[str]:
    """``inputs=photo.jpg`` and ``inputs=[a.jpg,b/]`` alike: one path, or any sequence of them."""
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    return [str(i) for i in inputs]  # type: ignore[union-attr]


def image_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder`` (sorted), and what was not read there, why: each folder
    that could not be listed, and each special file (FIFO, device, socket) with an image name,
    which is never opened (reading a FIFO would wait forever)."""
    unreadable: list[tuple[Path, str]] = []

    def note(err: OSError) -> None:
        reason = err.strerror or str(err)
        unreadable.append((Path(err.filename or folder), f"cannot list the folder ({reason})"))

    found: list[Path] = []
    seen: set[str] = set()  # real paths of folders walked: a symlink loop is walked once
    for root, folders, names in os.walk(folder, onerror=note, followlinks=True):
        seen.add(os.path.realpath(root))
        folders[:] = [f for f in folders if os.path.realpath(os.path.join(root, f)) not in seen]
        for name in names:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(root) / name
            problem = file_problem(path)
            if problem is None:
                found.append(path)
            else:
                unreadable.append((path, f"skipped: {problem}"))
    return sorted(found), sorted(unreadable)


def expand_inputs(inputs: list[str]) -> tuple[list[ImageSource], list[tuple[str, str]]]:
    """Files, folders (image files found under them, sorted) and ``.npz`` files to sources.

    Returns the sources and ``(input, reason)`` for each input that gives nothing to read.
    """
    sources: list[ImageSource] = []
    failures: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found, unreadable = image_files(path)
            failures.extend((shown(p), reason) for p, reason in unreadable)
            if not found and not unreadable:
                failures.append((shown(path), f"folder holds no image files {IMAGE_SUFFIXES}"))
            sources.extend(ImageSource(p) for p in found)
        elif not path.exists():
            failures.append((shown(path), "no such file or folder"))
        elif (problem := file_problem(path)) is not None:
            failures.append((shown(path), f"skipped: {problem}"))
        elif path.suffix.lower() == ".npz":
            try:
                sources.extend(npz_sources(path))
            except Exception as err:  # any way a file can fail to be an .npz of images
                failures.append((shown(path), f"cannot read as MedMNIST .npz ({err})"))
        else:
            sources.append(ImageSource(path))
    return sources, failures


def npz_sources(path: Path) -> list[ImageSource]:
    """One source per image of every ``*_images`` array (MedMNIST: train/val/test_images).

    Judged from the headers alone: the ``*_images`` arrays together may take at most
    :data:`MAX_NPZ_BYTES` decompressed (they are held together while their images are read).
    """
    try:
        with open_regular(path) as f:
            headers, keys = image_arrays(f)
    except zipfile.BadZipFile:
        raise ValueError("not a zip archive") from None
    return [ImageSource(path, key, i) for key in keys for i in range(headers[key][0][0])]


def image_arrays(file: BinaryIO) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype]], list[str]]:
    """The headers of an ``.npz`` and its ``*_images`` arrays, checked together
    (:func:`mtcsnn.data.untrusted.check_npz`)."""
    headers = check_npz(file, keys=())  # shapes and types, nothing judged yet
    keys = [k for k in headers if k.endswith("_images")]
    if not keys:
        raise ValueError(f"no *_images arrays; it holds {sorted(headers)}")
    for key in keys:
        shape, _ = headers[key]
        if len(shape) not in (3, 4):
            raise ValueError(f"{key} has shape {shape}, expected N x H x W (x 3)")
    check_npz(file, keys)
    return headers, keys


class ImageReader:
    """Reads sources as uint8 3 x size x size tensors; keeps ``.npz`` arrays open once."""

    def __init__(self, size: int) -> None:
        self.size = size
        # the arrays of one .npz at a time (its images come one after another): what is held
        # is bounded by what npz_sources allowed for one file
        self._arrays: dict[tuple[Path, str], np.ndarray | Exception] = {}
        self.largest_side = 0  # of the image files read, before preparation

    def read(self, source: ImageSource) -> torch.Tensor:
        if source.key is None:
            try:
                with open_regular(source.path, MAX_IMAGE_FILE_BYTES) as f:
                    photo = open_photo(f)
            except UnidentifiedImageError:
                raise ValueError("not an image file PIL can read") from None
            self.largest_side = max(self.largest_side, *photo.size)
            return to_tensor(prepare_image(photo, self.size))
        array = self._array(source.path, source.key)
        if isinstance(array, Exception):
            raise ValueError(str(array))
        return to_tensor(prepare_image(array_to_image(array[source.index]), self.size))

    def _array(self, path: Path, key: str) -> np.ndarray | Exception:
        """Each array decompressed once; one that cannot be read fails each of its images."""
        if (path, key) not in self._arrays:
            self._arrays = {k: v for k, v in self._arrays.items() if k[0] == path}
            try:
                # checked again as it is read: the file may have changed since it was listed
                with open_regular(path) as f:
                    image_arrays(f)
                    f.seek(0)
                    with np.load(f, allow_pickle=False) as npz:
                        self._arrays[(path, key)] = npz[key]
            except Exception as err:  # a broken member: its images fail, the others go on
                self._arrays[(path, key)] = ValueError(f"cannot read {key} ({err})")
        return self._arrays[(path, key)]


def read_all(
    sources: list[ImageSource], size: int, progress: bool = True
) -> Iterator[tuple[ImageSource, torch.Tensor | None, str | None]]:
    """Yield ``(source, image or None, failure reason or None)`` for each source."""
    from tqdm.auto import tqdm

    reader = ImageReader(size)
    warned = False
    for source in tqdm(sources, desc="reading", unit="img", disable=not progress or None):
        try:
            image = reader.read(source)
        except Exception as err:  # any failure of one input: recorded, the others go on
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            kind = type(err).__name__
            yield source, None, f"{kind}: {message}" if message else kind
            continue
        if not warned and size <= SMALL_MODEL and reader.largest_side >= 8 * size:
            warned = True
            log.warning(
                "this model takes %dx%d images: photographs such as %s (%d px) are reduced to "
                "that size, where most lesion detail is lost (see MODEL_CARD.md)",
                size,
                size,
                source.name,
                reader.largest_side,
            )
        yield source, image, None

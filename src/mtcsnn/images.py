"""Reading images for prediction: files, folders and MedMNIST ``.npz`` files.

Preprocessing follows how RetinaMNIST was made from the source fundus photographs (MedMNIST
v2: centre-cropped to a square, then resized): RGB, centre crop to the short side, bicubic
resize to the model's input size. An image that already has that size is left untouched, so
images taken out of the dataset give exactly the dataset's pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class ImageSource:
    """One image to read: a file, or entry ``index`` of array ``key`` in an ``.npz`` file."""

    path: Path
    key: str | None = None
    index: int | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.key is None else f"{self.path}:{self.key}[{self.index}]"


def to_square_rgb(image: Image.Image, size: int) -> Image.Image:
    """RGB, centre crop to a square on the short side, bicubic resize to ``size``."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 tensor, 3 x H x W, as the data modules hold images."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def expand_inputs(inputs: list[str]) -> tuple[list[ImageSource], list[tuple[str, str]]]:
    """Files, folders (image files found under them, sorted) and ``.npz`` files to sources.

    Returns the sources and ``(input, reason)`` for each input that gives nothing to read.
    """
    sources: list[ImageSource] = []
    failures: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((str(path), f"folder holds no image files {IMAGE_SUFFIXES}"))
            sources.extend(ImageSource(p) for p in found)
        elif not path.exists():
            failures.append((str(path), "no such file or folder"))
        elif path.suffix.lower() == ".npz":
            try:
                sources.extend(npz_sources(path))
            except (OSError, ValueError) as err:
                failures.append((str(path), f"cannot read as MedMNIST .npz ({err})"))
        else:
            sources.append(ImageSource(path))
    return sources, failures


def npz_sources(path: Path) -> list[ImageSource]:
    """One source per image of every ``*_images`` array (MedMNIST: train/val/test_images)."""
    with np.load(path) as npz:
        keys = [k for k in npz.files if k.endswith("_images")]
        if not keys:
            raise ValueError(f"no *_images arrays; it holds {npz.files}")
        shapes = {k: npz[k].shape for k in keys}
    for key, shape in shapes.items():
        if len(shape) not in (3, 4):
            raise ValueError(f"{key} has shape {shape}, expected N x H x W (x 3)")
    return [ImageSource(path, key, i) for key in keys for i in range(shapes[key][0])]


class ImageReader:
    """Reads sources as uint8 3 x size x size tensors; keeps ``.npz`` arrays open once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._arrays: dict[tuple[Path, str], np.ndarray] = {}

    def read(self, source: ImageSource) -> torch.Tensor:
        if source.key is None:
            try:
                with Image.open(source.path) as image:
                    image.load()
                    return to_tensor(to_square_rgb(image, self.size))
            except UnidentifiedImageError:
                raise ValueError("not an image file PIL can read") from None
        array = self._array(source.path, source.key)[source.index]
        return to_tensor(to_square_rgb(Image.fromarray(array), self.size))

    def _array(self, path: Path, key: str) -> np.ndarray:
        if (path, key) not in self._arrays:
            with np.load(path) as npz:
                self._arrays[(path, key)] = npz[key]
        return self._arrays[(path, key)]


def read_all(
    sources: list[ImageSource], size: int, progress: bool = True
) -> Iterator[tuple[ImageSource, torch.Tensor | None, str | None]]:
    """Yield ``(source, image or None, failure reason or None)`` for each source."""
    from tqdm.auto import tqdm

    reader = ImageReader(size)
    for source in tqdm(sources, desc="reading", unit="img", disable=not progress or None):
        try:
            yield source, reader.read(source), None
        except (OSError, ValueError, SyntaxError) as err:
            yield source, None, str(err).strip().splitlines()[0] if str(err) else type(err).__name__

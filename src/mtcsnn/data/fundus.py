"""Fundus photographs as the models see them: 8-bit RGB, the disc found, square, resized.

Shared by ``predict`` and the folder-of-photographs data module, so a photograph is prepared
the same way for training and for prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values of any depth scaled to 0-255 (never clipped), as uint8.

    Integers are scaled by their type's range where values exceed 255 (16-bit by 65535,
    larger by their maximum), booleans to 0/255, floats in 0-1 by 255, other floats from
    their minimum to maximum.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"pixels of type {array.dtype} are not an image")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("pixels hold NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if np.issubdtype(array.dtype, np.integer):
        if low >= 0 and high <= 255:
            return values.astype(np.uint8)
        if low >= 0 and high <= 65535:
            return np.round(values / 65535 * 255).astype(np.uint8)
    elif low >= 0 and high <= 1:
        return np.round(values * 255).astype(np.uint8)
    elif low >= 0 and high <= 255:
        return np.round(values).astype(np.uint8)
    span = high - low or 1.0
    return np.round((values - low) / span * 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB at 8 bits, whatever the mode: 16/32-bit and float images are scaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, "black"), image).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray) -> Image.Image:
    """An .npz entry (H x W or H x W x 1/3/4, any numeric type) as an 8-bit RGB image."""
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"an image of shape {array.shape} (expected H x W or H x W x 3)")
    pixels = to_uint8(np.ascontiguousarray(array))
    return Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").convert("RGB")


# Pillow's resampling filters by the names model.json gives them
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preparation:
    """Every choice :func:`prepare_image` makes, as values: the one description of how a
    photograph becomes the model's input.

    ``prepare_image`` follows it, and the ``preprocessing`` section of an exported model's
    ``model.json`` is written from it (:meth:`steps`, :meth:`summary`), so the two cannot
    drift apart. Changing a value changes what models see: data caches and trained models
    were made with the values of their time.
    """

    # an image already size x size (a dataset image) is used exactly as it is
    keep_model_size: bool = True
    # a pixel is bright when its brightest channel exceeds this share of the image's
    # brightest value, and this value (of 255)
    bright_fraction: float = 0.08
    bright_floor: int = 12
    # rows and columns count as disc when more than this share of their pixels is bright,
    # which ignores specks of noise in the border
    line_fraction: float = 0.01
    # a box narrower than this share of the image's short side is not a disc: centre square
    min_disc_fraction: float = 0.25
    # the colour the cropped disc is padded square with
    pad_value: tuple[int, int, int] = (0, 0, 0)
    # Pillow's filter for the resize to size x size (one of :data:`RESAMPLING`)
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        # values may come from a file (a checkpoint's spec): each checked for type and range
        if not isinstance(self.keep_model_size, bool):
            raise ValueError(f"keep_model_size={self.keep_model_size!r} is not true or false")
        if not isinstance(self.resample, str) or self.resample not in RESAMPLING:
            raise ValueError(f"resample={self.resample!r}; choose one of {sorted(RESAMPLING)}")
        pad = self.pad_value
        if not (
            isinstance(pad, (tuple, list))
            and len(pad) == 3
            and all(_whole(v) and 0 <= v <= 255 for v in pad)
        ):
            raise ValueError(f"pad_value={pad!r} is not an RGB colour of 0-255")
        object.__setattr__(self, "pad_value", tuple(int(v) for v in pad))
        if not (_whole(self.bright_floor) and 0 <= self.bright_floor <= 255):
            raise ValueError(f"bright_floor={self.bright_floor!r} is not a value of 0-255")
        for name in ("bright_fraction", "line_fraction", "min_disc_fraction"):
            value = getattr(self, name)
            if not (_number(value) and 0 <= value <= 1):
                raise ValueError(f"{name}={value!r} is not a share from 0 to 1")

    def as_dict(self) -> dict:
        """The values, as JSON holds them (the pad colour as a list)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def steps(self, size: int) -> list[dict]:
        """The preparation step by step, each with its values, for someone reimplementing it.

        Every value of this object appears under its own name in exactly one step.
        """
        return [
            {
                "step": "decode",
                "rule": "decode the file; turn it upright as its EXIF orientation says; convert "
                "to RGB with 8 bits per channel (deeper images scaled to 0-255, not clipped; "
                "transparency composited onto black)",
            },
            {
                "step": "keep_if_model_size",
                "keep_model_size": self.keep_model_size,
                "size": [size, size],
                "rule": "when keep_model_size is true and the image is already size (width x "
                "height), it is the model's input as it is: skip every step below",
            },
            {
                "step": "find_disc",
                "bright_fraction": self.bright_fraction,
                "bright_floor": self.bright_floor,
                "line_fraction": self.line_fraction,
                "min_disc_fraction": self.min_disc_fraction,
                "rule": "brightness = max of R, G, B per pixel; a pixel is bright when its "
                "brightness > max(bright_floor, bright_fraction x the image's largest "
                "brightness); a row is disc when its count of bright pixels > line_fraction x "
                "the image width, a column when its count > line_fraction x the image height; "
                "the box runs from the first to the last disc row and column (inclusive). No "
                "disc row or column, or a box whose short side < min_disc_fraction x the "
                "image's short side: no disc, take the centre square instead (side = min(W, "
                "H), left = (W - side) // 2, top = (H - side) // 2)",
            },
            {
                "step": "crop",
                "rule": "crop to the box (the disc's, or the centre square)",
            },
            {
                "step": "pad_square",
                "pad_value": list(self.pad_value),
                "rule": "side = max(w, h) of the crop; a side x side image of pad_value with "
                "the crop pasted at ((side - w) // 2, (side - h) // 2)",
            },
            {
                "step": "resize",
                "size": [size, size],
                "resample": self.resample,
                "rule": "unless already size, resize to size with Pillow's Image.resize and "
                "this filter (Image.Resampling[resample.upper()])",
            },
            {
                "step": "to_input",
                "rule": "uint8, channels first (3 x size x size), images stacked N x 3 x size "
                "x size; no scaling or normalisation: the model does that inside",
            },
        ]

    def summary(self, size: int) -> str:
        """The preparation in one sentence."""
        kept = f"an image already {size}x{size} is used as it is; " if self.keep_model_size else ""
        return (
            f"Upright 8-bit RGB; {kept}otherwise the fundus disc (pixels brighter than "
            f"{self.bright_fraction:g} of the brightest and than {self.bright_floor}) is cropped "
            f"to, padded square with RGB {tuple(self.pad_value)} and resized to {size}x{size} "
            f"({self.resample}); where no disc stands out, the centre square is taken instead. "
            "Fed to the model as uint8, normalised inside it."
        )


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


# what predict, explain, the folder data module and export use (read at each call, never
# copied, so that one value changed here changes all of them)
PREPARATION = Preparation()


def disc_box(
    rgb: np.ndarray, preparation: Preparation | None = None
) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of the fundus disc: the bright region on the dark border.

    A pixel is bright when its brightest channel exceeds ``bright_fraction`` of the image's
    brightest value (and ``bright_floor``); rows and columns count as disc when over
    ``line_fraction`` of their pixels are bright, which ignores specks of noise in the border.
    None when nothing stands out (a uniformly dark image), or when the box covers less than
    ``min_disc_fraction`` of the short side. (Values: ``preparation``, by default
    :data:`PREPARATION`.)
    """
    preparation = preparation or PREPARATION
    brightest = rgb.max(axis=2) if rgb.ndim == 3 else rgb
    peak = int(brightest.max()) if brightest.size else 0
    bright = brightest > max(preparation.bright_floor, preparation.bright_fraction * peak)
    height, width = bright.shape
    rows = np.flatnonzero(bright.sum(axis=1) > preparation.line_fraction * width)
    cols = np.flatnonzero(bright.sum(axis=0) > preparation.line_fraction * height)
    if not len(rows) or not len(cols):
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if min(box[2] - box[0], box[3] - box[1]) < preparation.min_disc_fraction * min(width, height):
        return None
    return box


def prepare_image(
    image: Image.Image, size: int, preparation: Preparation | None = None
) -> Image.Image:
    """A fundus photograph as the models see it: 8-bit RGB, ``size`` x ``size``.

    An image of that size already (a dataset image) is used as it is. Otherwise the disc is
    found (:func:`disc_box`) and cropped to, padded to a square (so a disc wider than the
    frame keeps its edges), and resized. Without a disc to find, the centre square is taken,
    as MedMNIST made RetinaMNIST. Every value is ``preparation``'s (by default
    :data:`PREPARATION`, read at each call), which also writes the exported model's
    description of this (:meth:`Preparation.steps`).
    """
    preparation = preparation or PREPARATION
    image = to_rgb(image)
    width, height = image.size
    if preparation.keep_model_size and width == height == size:
        return image
    box = disc_box(np.asarray(image), preparation)
    if box is None:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    image = image.crop(box)
    width, height = image.size
    if width != height:
        side = max(width, height)
        square = Image.new("RGB", (side, side), tuple(int(v) for v in preparation.pad_value))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLING[preparation.resample])
    return image


def open_photo(path: str | Path) -> Image.Image:
    """An image file, decoded, upright as a camera's viewer shows it (EXIF orientation)."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)

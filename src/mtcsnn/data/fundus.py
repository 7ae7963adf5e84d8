"""Fundus photographs as the models see them: 8-bit RGB, the disc found, square, resized.

Shared by ``predict`` and the folder-of-photographs data module, so a photograph is prepared
the same way for training and for prediction.
"""

from __future__ import annotations

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


def disc_box(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of the fundus disc: the bright region on the dark border.

    A pixel is bright when its brightest channel exceeds 8% of the image's brightest value (and
    12 of 255); rows and columns count as disc when over 1% of their pixels are bright, which
    ignores specks of noise in the border. None when nothing stands out (a uniformly dark
    image), or when the box covers less than a quarter of the short side.
    """
    brightest = rgb.max(axis=2) if rgb.ndim == 3 else rgb
    peak = int(brightest.max()) if brightest.size else 0
    bright = brightest > max(12, 0.08 * peak)
    height, width = bright.shape
    rows = np.flatnonzero(bright.sum(axis=1) > 0.01 * width)
    cols = np.flatnonzero(bright.sum(axis=0) > 0.01 * height)
    if not len(rows) or not len(cols):
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if min(box[2] - box[0], box[3] - box[1]) < min(width, height) / 4:
        return None
    return box


def prepare_image(image: Image.Image, size: int) -> Image.Image:
    """A fundus photograph as the models see it: 8-bit RGB, ``size`` x ``size``.

    An image of that size already (a dataset image) is used as it is. Otherwise the disc is
    found (:func:`disc_box`) and cropped to, padded with black to a square (so a disc wider
    than the frame keeps its edges), and resized (bicubic). Without a disc to find, the centre
    square is taken, as MedMNIST made RetinaMNIST.
    """
    image = to_rgb(image)
    width, height = image.size
    if width == height == size:
        return image
    box = disc_box(np.asarray(image))
    if box is None:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    image = image.crop(box)
    width, height = image.size
    if width != height:
        side = max(width, height)
        square = Image.new("RGB", (side, side))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def open_photo(path: str | Path) -> Image.Image:
    """An image file, decoded, upright as a camera's viewer shows it (EXIF orientation)."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)

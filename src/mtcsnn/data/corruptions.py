"""Real photographs are not clean: the RetinaMNIST corruptions of MedMNIST-C (Di Salvo et al.,
2024), eight kinds at five severities, on uint8 RGB images (N, H, W, 3).

The definitions and parameters are MedMNIST-C's for RetinaMNIST (its ``medmnistc`` package,
``corruptions/registry.py``). That package is not a dependency: it pins ``medmnist==3.0.1`` and
``scikit-image==0.23.2`` and needs ImageMagick (through Wand) for one corruption. Here each is
written on NumPy and Pillow. MedMNIST-C defines them on 224x224 images; on an image of another
size the parameters measured in pixels (the blur radii and widths) are scaled by size / 224, so
that a corruption covers the same part of the eye at every size. Random parts (noise, the
direction of motion) come from a seeded generator: the same seed gives the same images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance
from scipy.ndimage import correlate

from mtcsnn.errors import ConfigError

# the size MedMNIST-C's pixel parameters are measured at
REFERENCE_SIZE = 224
SEVERITIES = (1, 2, 3, 4, 5)

# RetinaMNIST's parameters, severity 1 to 5 (medmnistc corruptions/registry.py)
PARAMETERS: dict[str, tuple] = {
    "pixelate": (0.8, 0.60, 0.50, 0.40, 0.35),  # the share of the size kept
    "jpeg_compression": (30, 25, 20, 10, 5),  # JPEG quality
    "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20),  # std, on [0, 1] intensities
    "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),  # std of the multiplicative noise
    "defocus_blur": ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),  # disk radius, alias
    "motion_blur": ((8, 5), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),  # PIL brightness factor
    "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),  # PIL contrast factor
}
CORRUPTIONS = tuple(PARAMETERS)


def _each(images: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(image))) for image in images])


def pixelate(images: np.ndarray, factor: float, scale: float, rng) -> np.ndarray:
    def one(image: Image.Image) -> Image.Image:
        w, h = image.size
        small = image.resize((max(int(w * factor), 1), max(int(h * factor), 1)), Image.BOX)
        return small.resize((w, h), Image.BOX)

    return _each(images, one)


def jpeg_compression(images: np.ndarray, quality: int, scale: float, rng) -> np.ndarray:
    def one(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")

    return _each(images, one)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    # MedMNIST-C truncates ((x * 255).astype(np.uint8)), it does not round
    return (np.clip(values, 0, 1) * 255).astype(np.uint8)


def gaussian_noise(images: np.ndarray, std: float, scale: float, rng) -> np.ndarray:
    x = images / 255.0
    return _to_uint8(x + rng.normal(size=x.shape, scale=std))


def speckle_noise(images: np.ndarray, std: float, scale: float, rng) -> np.ndarray:
    x = images / 255.0
    return _to_uint8(x + x * rng.normal(size=x.shape, scale=std))


def _gaussian_3(sigma: float) -> np.ndarray:
    """OpenCV's 3-tap Gaussian kernel of ``sigma`` (as ``cv2.GaussianBlur(ksize=(3, 3))``)."""
    if sigma <= 0:
        sigma = 0.8  # OpenCV's choice for ksize 3 when sigma is not positive
    taps = np.exp(-(np.array([-1.0, 0.0, 1.0]) ** 2) / (2 * sigma**2))
    return taps / taps.sum()


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: a disk of ``radius``, softened by a 3x3 Gaussian."""
    reach = max(8, math.ceil(radius))  # ImageNet-C: a 17x17 kernel up to radius 8
    span = np.arange(-reach, reach + 1)
    x, y = np.meshgrid(span, span)
    kernel = ((x**2 + y**2) <= radius**2).astype(np.float64)
    kernel /= kernel.sum()
    gauss = _gaussian_3(alias_blur)
    kernel = correlate(kernel, gauss[None, :], mode="mirror")
    return correlate(kernel, gauss[:, None], mode="mirror")


def defocus_blur(images: np.ndarray, params: tuple, scale: float, rng) -> np.ndarray:
    radius, alias = params
    kernel = disk(radius * scale, alias * scale)
    x = images / 255.0
    # cv2.filter2D's border (BORDER_REFLECT_101) is scipy's "mirror"
    out = np.stack(
        [
            np.stack([correlate(img[..., c], kernel, mode="mirror") for c in range(3)], -1)
            for img in x
        ]
    )
    return _to_uint8(out)


def motion_kernel(radius: float, sigma: float, angle: float) -> list[tuple[int, int, float]]:
    """ImageMagick's motion blur: ``2 * ceil(radius) + 1`` taps behind each pixel along
    ``angle`` (degrees), Gaussian weights of ``sigma``; ``(dy, dx, weight)`` per tap."""
    width = 2 * math.ceil(radius) + 1 if radius > 0 else 1
    sigma = max(sigma, 1e-6)
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    px, py = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    norm = math.hypot(px, py)
    return [
        (math.ceil(i * px / norm - 0.5), math.ceil(i * py / norm - 0.5), float(w))
        for i, w in enumerate(weights)
    ]


def motion_blur(images: np.ndarray, params: tuple, scale: float, rng) -> np.ndarray:
    radius, sigma = params
    out = np.empty(images.shape, dtype=np.float64)
    h, w = images.shape[1:3]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for n, image in enumerate(images.astype(np.float64)):
        angle = rng.uniform(-45, 45)  # MedMNIST-C: a random direction per image
        acc = np.zeros(image.shape)
        for dy, dx, weight in motion_kernel(radius * scale, sigma * scale, angle):
            # edge pixels repeat past the border (ImageMagick's default virtual pixels)
            acc += weight * image[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
        out[n] = acc
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def brightness_down(images: np.ndarray, factor: float, scale: float, rng) -> np.ndarray:
    return _each(images, lambda image: ImageEnhance.Brightness(image).enhance(factor))


def contrast_down(images: np.ndarray, factor: float, scale: float, rng) -> np.ndarray:
    return _each(images, lambda image: ImageEnhance.Contrast(image).enhance(factor))


_FUNCTIONS = {
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "gaussian_noise": gaussian_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "brightness_down": brightness_down,
    "contrast_down": contrast_down,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` (N, H, W, 3) uint8 under corruption ``name`` at ``severity`` 1-5."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}: use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity {severity}: use 1-5")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("corruptions take uint8 RGB images of shape (N, H, W, 3)")
    scale = images.shape[1] / REFERENCE_SIZE
    rng = np.random.default_rng(seed)
    return _FUNCTIONS[name](images, PARAMETERS[name][severity - 1], scale, rng)


def check_corruptions(value: object) -> tuple[str, ...]:
    """``corruptions``: null (none), ``all``, or a list of names; the names, in order."""
    if value is None:
        return ()
    if value == "all":
        return CORRUPTIONS
    names = [value] if isinstance(value, str) else value
    if not (isinstance(names, (list, tuple)) or type(names).__name__ == "ListConfig") or not all(
        isinstance(n, str) and n in CORRUPTIONS for n in names
    ):
        raise ConfigError(
            "corruptions", value, "null, all, or a list of: " + ", ".join(CORRUPTIONS)
        )
    return tuple(dict.fromkeys(names))

"""Inputs to predict and explain are files from others: each one is read right or fails alone."""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mtcsnn.inference.images import (
    MAX_NPZ_ARRAY_BYTES,
    ImageReader,
    ImageSource,
    expand_inputs,
    read_all,
    to_uint8,
)


def read(path: Path, size: int = 8) -> np.ndarray:
    return ImageReader(size).read(ImageSource(path)).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", np.array([[0, 32768], [65535, 257]], dtype=np.uint16), [[0, 128], [255, 1]]),
        ("I", np.array([[0, 1000], [65535, 0]], dtype=np.int32), [[0, 4], [255, 0]]),
        ("F", np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), [[0, 128], [255, 64]]),
    ],
)
def test_deep_images_are_scaled_not_clipped(tmp_path, mode, values, expected):
    path = tmp_path / "deep.tif"
    image = Image.fromarray(values)
    assert image.mode == mode
    image.save(path)
    pixels = read(path, size=2)
    assert pixels[..., 0].tolist() == expected
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_palette_cmyk_and_rgba_images_read_as_their_colours(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (200, 10, 10)
    palette = tmp_path / "p.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(palette)
    assert read(palette, 2)[0, 0].tolist() == [200, 10, 10]
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(cmyk, quality=100)
    assert read(cmyk, 2)[0, 0, 0] > 200 and read(cmyk, 2)[0, 0, 1] < 60
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (2, 2), (100, 150, 200, 255)).save(rgba)
    assert read(rgba, 2)[0, 0].tolist() == [100, 150, 200]


def test_exif_orientation_is_applied(tmp_path):
    # stored sideways, left half dimmer: the camera's tag says to turn it upright
    stored = np.full((20, 40, 3), 255, dtype=np.uint8)
    stored[:, :20] = 80
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "sideways.jpg"
    image.save(path, exif=exif, quality=100)
    upright = read(path, size=20)  # 20 wide x 40 tall upright, padded to 40 x 40, resized
    top, bottom = upright[:8, 8:12].mean(), upright[-8:, 8:12].mean()
    assert 60 < top < 100 and bottom > 230  # the dimmer half is now on top


def test_uint8_conversion_of_arrays():
    assert to_uint8(np.array([0, 65535], dtype=np.uint16)).tolist() == [0, 255]
    assert to_uint8(np.array([False, True])).tolist() == [0, 255]
    assert to_uint8(np.array([-1.0, 1.0])).tolist() == [0, 255]  # min..max
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([np.nan, 1.0]))


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SHAPES = [(2, 5, 5), (2, 5, 5, 3), (2, 5, 5, 1), (2, 5, 5, 4), (2, 5), (2, 3, 3, 3, 3)]


def bomb_npz(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose header promises a huge array, holding a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("test_images.npy", header.getvalue() + b"\0" * 64)


def test_an_npz_that_would_decompress_to_gigabytes_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.npz"
    bomb_npz(path, (1_000_000, 224, 224, 3))
    sources, failures = expand_inputs([str(path)])
    assert sources == []
    ((name, reason),) = failures
    assert "GiB decompressed" in reason and f"{MAX_NPZ_ARRAY_BYTES // 1024**3} GiB" in reason


def test_each_npz_array_is_decompressed_once(tmp_path, monkeypatch):
    path = tmp_path / "set.npz"
    np.savez(path, test_images=np.zeros((5, 28, 28, 3), dtype=np.uint8))
    loads = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(1) or original(*a, **k))
    sources, _ = expand_inputs([str(path)])
    results = list(read_all(sources, 28, progress=False))
    assert len(results) == 5 and all(image is not None for _, image, _ in results)
    assert len(loads) == 1


@SETTINGS
@given(
    content=st.binary(max_size=300),
    suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".webp", ".npz"]),
)
def test_random_bytes_under_an_image_suffix_fail_alone(tmp_path, content, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(content)
    sources, failures = expand_inputs([str(path)])
    results = list(read_all(sources, 28, progress=False))
    assert len(failures) + sum(image is None for _, image, _ in results) >= 1 or all(
        image is not None and image.shape == (3, 28, 28) for _, image, _ in results
    )
    for _, image, reason in results:
        assert (image is None) != (reason is None)


ARRAYS = st.sampled_from(
    [np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_, np.complex64]
).flatmap(
    lambda dtype: st.tuples(
        st.just(dtype),
        st.sampled_from(SHAPES),
        st.floats(-1e6, 1e6) | st.just(float("nan")),
    )
)


@SETTINGS
@given(spec=ARRAYS)
def test_random_arrays_in_an_npz_are_read_or_fail_alone(tmp_path, spec):
    dtype, shape, value = spec
    with np.errstate(all="ignore"):
        array = np.full(shape, value).astype(dtype)
    path = tmp_path / "arrays.npz"
    np.savez(path, test_images=array)
    sources, failures = expand_inputs([str(path)])
    for _, image, reason in read_all(sources, 28, progress=False):
        assert (image is None) != (reason is None)
        if image is not None:
            assert image.shape == (3, 28, 28)
    assert sources or failures


@pytest.mark.slow
def test_predict_writes_both_files_whatever_the_inputs(tiny_checkpoint, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = inputs / "good.png"
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(good)
    (inputs / "noise.png").write_bytes(os.urandom(500))
    (inputs / "text.jpg").write_text("not a picture")
    odd = Path(os.fsdecode(os.fsencode(inputs) + b"/bad\xffname.png"))
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(odd)
    np.savez(tmp_path / "objects.npz", test_images=np.zeros((2, 4, 4, 3), dtype=np.complex64))
    bomb_npz(tmp_path / "bomb.npz", (10_000_000, 28, 28, 3))
    out = tmp_path / "out"
    result = run_module(
        "mtcsnn.predict",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{inputs},{tmp_path / 'objects.npz'},{tmp_path / 'bomb.npz'}]",
        f"hydra.run.dir={out}",
        "progress=false",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    with open(out / "predictions.csv", newline="") as f:
        predicted = [row["path"] for row in csv.DictReader(f)]
    with open(out / "failures.csv", newline="") as f:
        failed = {row["input"]: row["reason"] for row in csv.DictReader(f)}
    assert str(good) in predicted and any(p.endswith("bad\\xffname.png") for p in predicted)
    assert len(predicted) == 2
    assert any(k.endswith("noise.png") for k in failed)
    assert any(k.endswith("text.jpg") for k in failed)
    assert any("objects.npz" in k and "complex64" in v for k, v in failed.items())
    assert any(k.endswith("bomb.npz") and "GiB" in v for k, v in failed.items())
    assert "not a medical device" in (out / "INTENDED_USE.txt").read_text()


@pytest.mark.slow
def test_explain_names_never_collide_and_says_what_the_cap_skipped(tiny_checkpoint, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("eye.png", "eye.jpg", "a b.png", "a_b.png", "a,b.png"):
        Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(inputs / name)
    out = tmp_path / "out"
    result = run_module(
        "mtcsnn.explain",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{inputs}]",
        f"hydra.run.dir={out}",
        "progress=false",
        "max_images=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "explaining the first 4 of 5 images, skipping 1" in output
    written = sorted(p.name for p in out.glob("*_gradcam.png"))
    assert len(written) == 4 and len(set(written)) == 4
    assert "wrote 4 Grad-CAM overlays" in output


def test_a_decompression_bomb_image_fails_alone(tmp_path, monkeypatch):
    # Pillow refuses images of more than 2 x MAX_IMAGE_PIXELS; a small limit stands in for one
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(bomb)
    ((_, image, reason),) = list(read_all([ImageSource(bomb)], 28, progress=False))
    assert image is None and reason.startswith("DecompressionBombError")


@pytest.fixture(scope="module")
def good_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.png"
    Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).save(path)
    return path


@SETTINGS
@given(
    content=st.binary(max_size=200),
    suffix=st.sampled_from([".png", ".jpg", ".tif", ".npz"]),
    array=ARRAYS,
)
def test_predict_always_writes_both_csvs_and_keeps_the_good_inputs(
    tiny_checkpoint, good_image, tmp_path_factory, capsys, content, suffix, array
):
    """The real command (``python -m mtcsnn.predict``, run in this process for speed)."""
    import sys
    from unittest import mock

    from hydra.core.global_hydra import GlobalHydra

    from mtcsnn.predict import main

    folder = tmp_path_factory.mktemp("inputs")
    (folder / f"random{suffix}").write_bytes(content)
    dtype, shape, value = array
    with np.errstate(all="ignore"):
        np.savez(folder / "arrays.npz", test_images=np.full(shape, value).astype(dtype))
    inputs = [str(good_image), str(folder / f"random{suffix}"), str(folder / "arrays.npz")]
    output = folder / "out" / "predictions.csv"
    argv = [
        "mtcsnn.predict",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{','.join(inputs)}]",
        f"output={output}",
        f"hydra.run.dir={folder / 'run'}",
        "batch_size=4",
        "progress=false",
    ]
    GlobalHydra.instance().clear()
    with mock.patch.object(sys, "argv", argv):
        try:
            main()
        except SystemExit as stop:  # what the command line shows: one error line
            assert str(stop.code).startswith("error: ") and "\n" not in str(stop.code)
    GlobalHydra.instance().clear()
    assert "Traceback" not in capsys.readouterr().err
    with open(output, newline="") as f:
        predicted = [row["path"] for row in csv.DictReader(f)]
    with open(output.with_name("failures.csv"), newline="") as f:
        failed = [row["input"] for row in csv.DictReader(f)]
    assert str(good_image) in predicted
    for name in inputs:  # every input is either predicted or listed with its reason
        assert any(line.startswith(name) for line in predicted + failed), name

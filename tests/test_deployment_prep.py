"""One description of the preparation: someone who follows ``model.json`` step by step, with
their own code, gives the exported model what ``predict`` gives it, and gets its numbers.

:func:`follow_model_json` below is that someone: numpy and Pillow only, every value read from
``model.json``, nothing of mtcsnn's preparation code called.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mtcsnn.data import fundus
from mtcsnn.data.fundus import PREPARATION, Preparation, prepare_image
from mtcsnn.inference.batch import predict_batch, predict_inputs
from mtcsnn.inference.export import export_model, model_description
from mtcsnn.inference.images import to_tensor
from mtcsnn.losses import PairCrossEntropyLoss
from mtcsnn.models import MTCSNNModule, SiameseResNet

SIZE = 48


def follow_model_json(photo: Image.Image, preprocessing: dict) -> np.ndarray:
    """The model's input (3 x S x S, uint8) as ``preprocessing`` describes it, step by step."""
    size = preprocessing["size"]
    pixels = np.zeros(0)
    box = None
    for step in preprocessing["steps"]:
        kind = step["step"]
        if kind == "decode":
            pixels = np.asarray(ImageOps.exif_transpose(photo).convert("RGB"))
        elif kind == "keep_if_model_size":
            height, width = pixels.shape[:2]
            if step["keep_model_size"] and [width, height] == step["size"]:
                break
        elif kind == "find_disc":
            brightness = pixels.max(axis=2).astype(np.int64)
            height, width = brightness.shape
            threshold = max(step["bright_floor"], step["bright_fraction"] * brightness.max())
            bright = brightness > threshold
            rows = np.nonzero(bright.sum(axis=1) > step["line_fraction"] * width)[0]
            cols = np.nonzero(bright.sum(axis=0) > step["line_fraction"] * height)[0]
            box = None
            if len(rows) and len(cols):
                left, top, right, bottom = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
                short = min(right - left, bottom - top)
                if short >= step["min_disc_fraction"] * min(width, height):
                    box = (left, top, right, bottom)
            if box is None:
                side = min(width, height)
                left, top = (width - side) // 2, (height - side) // 2
                box = (left, top, left + side, top + side)
        elif kind == "crop":
            left, top, right, bottom = box
            pixels = pixels[top:bottom, left:right]
        elif kind == "pad_square":
            height, width = pixels.shape[:2]
            side = max(width, height)
            square = np.empty((side, side, 3), dtype=np.uint8)
            square[:] = step["pad_value"]
            top, left = (side - height) // 2, (side - width) // 2
            square[top : top + height, left : left + width] = pixels
            pixels = square
        elif kind == "resize":
            width, height = step["size"]
            if pixels.shape[:2] != (height, width):
                resample = Image.Resampling[step["resample"].upper()]
                pixels = np.asarray(Image.fromarray(pixels).resize((width, height), resample))
        elif kind == "to_input":
            pass  # uint8, channels first: done below
        else:
            raise AssertionError(f"model.json names a step this reader does not know: {kind}")
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def photograph(
    width: int = 300, height: int = 220, seed: int = 0, radius: float = 0.6
) -> Image.Image:
    """A camera-like fundus photograph: a textured bright disc off-centre on a dark frame
    with sensor noise (so a centre crop cuts the disc)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    # as on camera photographs, the disc is cut at top and bottom: it is padded square
    cx, cy, radius = 0.58 * width, 0.5 * height, radius * min(width, height)
    r = np.hypot(xx - cx, yy - cy)
    disc = r < radius
    shade = np.clip(1.1 - (r / radius) ** 2 * 0.6, 0, 1)
    image = rng.integers(0, 9, (height, width, 3)).astype(np.float64)  # the dark border
    base = np.array([190.0, 95.0, 40.0])
    vessels = 0.75 + 0.25 * np.sin(xx / 5.0 + np.sin(yy / 9.0) * 2)
    for c in range(3):
        image[..., c] += disc * base[c] * shade * vessels
    image[np.hypot(xx - cx - 20, yy - cy) < 9] = (250, 230, 160)  # the optic disc
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def module() -> MTCSNNModule:
    torch.manual_seed(0)
    net = SiameseResNet("resnet18", dropout=None)
    return MTCSNNModule(net, PairCrossEntropyLoss(), optimizer=torch.optim.Adam).eval()


@pytest.fixture(scope="module")
def exported(module, tmp_path_factory):
    """The model exported as TorchScript, as ``python -m mtcsnn.export`` writes it."""
    path = tmp_path_factory.mktemp("export") / "model.pt"
    export_model(module, SIZE, "torchscript", path)
    return torch.jit.load(str(path))


def model_json(**kwargs) -> dict:
    """model.json as export writes it (through JSON, as a user reads it)."""
    about = model_description("torchscript", SIZE, ["run.ckpt"], "model.pt", **kwargs)
    return json.loads(json.dumps(about))


def predicted(module, path) -> np.ndarray:
    rows, failures = predict_inputs(module, [str(path)], SIZE, torch.device("cpu"), progress=False)
    assert not failures
    return np.array([float(v) for v in rows[0][2:7]])


def test_following_model_json_gives_the_exported_model_predicts_probabilities(
    module, exported, tmp_path
):
    photo = photograph()
    path = tmp_path / "eye.png"
    photo.save(path)
    about = model_json()
    assert about["input"]["shape"] == ["N", 3, SIZE, SIZE]
    assert "disc" in about["preprocessing"]["summary"]
    pixels = follow_model_json(Image.open(path), about["preprocessing"])
    # the very pixels predict feeds the network
    assert np.array_equal(pixels, to_tensor(prepare_image(photo, SIZE)).numpy())
    with torch.no_grad():
        probs, _ = exported(torch.from_numpy(pixels)[None])
    want = predicted(module, path)
    np.testing.assert_allclose(probs[0].numpy(), want, rtol=1e-5, atol=1e-7)
    # and the photograph is one where the preparation matters: a centre crop, as model.json
    # used to say, gives the exported model other probabilities
    side = min(photo.size)
    left = (photo.width - side) // 2
    centre = photo.crop((left, 0, left + side, side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    with torch.no_grad():
        other, _ = exported(torch.from_numpy(np.asarray(centre).transpose(2, 0, 1).copy())[None])
    assert np.abs(other[0].numpy() - want).max() > 1e-4


@pytest.mark.parametrize("width, height", [(300, 220), (220, 300), (SIZE, SIZE), (80, 80)])
def test_following_model_json_gives_predicts_pixels_for_other_shapes(width, height):
    photo = photograph(width, height, seed=width)
    pixels = follow_model_json(photo, model_json()["preprocessing"])
    assert np.array_equal(pixels, to_tensor(prepare_image(photo, SIZE)).numpy())


def test_a_photograph_without_a_disc_is_followed_too():
    rng = np.random.default_rng(3)
    dark = Image.fromarray(rng.integers(0, 10, (90, 140, 3), dtype=np.uint8))
    pixels = follow_model_json(dark, model_json()["preprocessing"])
    assert np.array_equal(pixels, to_tensor(prepare_image(dark, SIZE)).numpy())


def test_every_preparation_value_is_written_in_model_json_under_its_name():
    about = model_json()["preprocessing"]
    values = {f.name: getattr(PREPARATION, f.name) for f in fields(Preparation)}
    assert about["parameters"] == {
        k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
    }
    for name, value in about["parameters"].items():
        holding = [step for step in about["steps"] if name in step]
        assert len(holding) == 1, name
        assert holding[0][name] == value


# each preparation value changed to one that changes what a model sees, and the photograph
# (width, height, disc radius as a share of the short side) where it does
CHANGED = {
    "keep_model_size": (False, (SIZE, SIZE, 0.3)),
    "bright_fraction": (0.6, (300, 220, 0.6)),
    "bright_floor": (120, (300, 220, 0.6)),
    "line_fraction": (0.5, (300, 220, 0.6)),
    "min_disc_fraction": (0.9, (300, 220, 0.3)),
    "pad_value": ((30, 200, 90), (300, 220, 0.6)),
    "resample": ("nearest", (300, 220, 0.6)),
}


def test_every_preparation_value_has_a_changed_case_here():
    assert set(CHANGED) == {f.name for f in fields(Preparation)}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_changed_preparation_value_is_followed_by_model_json(name, monkeypatch):
    value, (width, height, radius) = CHANGED[name]
    photo = photograph(width, height, seed=1, radius=radius)
    before = to_tensor(prepare_image(photo, SIZE)).numpy()
    changed = replace(PREPARATION, **{name: value})
    # the one object predict and export both read
    monkeypatch.setattr(fundus, "PREPARATION", changed)
    now = to_tensor(prepare_image(photo, SIZE)).numpy()
    assert not np.array_equal(now, before), f"{name}={value!r} changes nothing here"
    about = model_json()["preprocessing"]
    assert about["parameters"][name] == (list(value) if isinstance(value, tuple) else value)
    assert np.array_equal(follow_model_json(photo, about), now)


def test_predict_and_export_read_the_same_preparation(monkeypatch, module, tmp_path):
    """Change the preparation in one place: predict's images and model.json both follow."""
    photo = photograph(seed=5)
    path = tmp_path / "eye.png"
    photo.save(path)
    default = predicted(module, path)
    monkeypatch.setattr(fundus, "PREPARATION", replace(PREPARATION, pad_value=(255, 255, 255)))
    changed = predicted(module, path)
    assert np.abs(changed - default).max() > 1e-6
    pixels = follow_model_json(photo, model_json()["preprocessing"])
    probs, _ = predict_batch(module, [torch.from_numpy(pixels)], torch.device("cpu"))
    np.testing.assert_allclose(probs[0].numpy(), changed, rtol=1e-5, atol=1e-7)


def test_a_preparation_with_values_no_reader_could_follow_is_refused():
    bad_values = [
        {"resample": "magic"},
        {"resample": ["bicubic"]},
        {"pad_value": (0, 0)},
        {"pad_value": (0, 0, 256)},
        {"pad_value": "red"},
        {"bright_fraction": 2.0},
        {"bright_fraction": float("nan")},
        {"bright_floor": "12"},
        {"bright_floor": True},
        {"keep_model_size": "yes"},
    ]
    for bad in bad_values:
        with pytest.raises(ValueError):
            Preparation(**bad)
    assert Preparation(pad_value=[1, 2, 3]).pad_value == (1, 2, 3)  # as JSON gives it


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_commands_model_json_followed_gives_predicts_csv(tiny_checkpoint, tmp_path, fmt):
    """As a user would: export a trained model, predict a photograph, then follow the exported
    model.json with their own code and run the exported model on it."""
    from helpers.cli import run_module

    photo = photograph(seed=9)
    path = tmp_path / "eye.png"
    photo.save(path)
    out = tmp_path / "export"
    done = run_module(
        "mtcsnn.export", f"ckpt_path={tiny_checkpoint}", f"format={fmt}", f"hydra.run.dir={out}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = tmp_path / "predict" / "predictions.csv"
    done = run_module(
        "mtcsnn.predict",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{path}]",
        f"output={predictions}",
        f"hydra.run.dir={tmp_path / 'predict'}",
        "device=cpu",
        "progress=false",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    header, row = [line.split(",") for line in predictions.read_text().splitlines()]
    want = np.array([float(row[header.index(f"prob_{c}")]) for c in range(5)])

    about = json.loads((out / "model.json").read_text())
    pixels = follow_model_json(Image.open(path), about["preprocessing"])[None]
    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(
            str(out / about["model"]), providers=["CPUExecutionProvider"]
        )
        (probs,) = session.run(["probabilities"], {"images": pixels})
    else:
        with torch.no_grad():
            probs = torch.jit.load(str(out / about["model"]))(torch.from_numpy(pixels))[0].numpy()
    np.testing.assert_allclose(probs[0], want, rtol=1e-4, atol=1e-6)

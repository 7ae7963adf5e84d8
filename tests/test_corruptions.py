"""The RetinaMNIST corruptions of MedMNIST-C: what each does, checked directly, and against
the ``medmnistc`` package itself where it is installed (it needs ImageMagick)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from mtcsnn.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt, disk, motion_kernel


def fundus(n: int = 6, size: int = 28, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (0.45 * size) ** 2)[..., None]
    images = rng.integers(60, 200, (n, size, size, 3)) * disc
    return images.astype(np.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_keeps_shape_and_type_and_grows_with_severity(name):
    images = fundus()
    changes = []
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, seed=1)
        assert out.shape == images.shape and out.dtype == np.uint8
        changes.append(np.abs(out.astype(float) - images).mean())
        assert np.array_equal(out, corrupt(images, name, severity, seed=1))  # seeded
    # at 28x28 the mildest defocus (a 4-pixel disk at 224) is half a pixel: no change at all
    assert changes[-1] > max(changes[0], 0)


def test_brightness_contrast_pixelate_and_jpeg_are_pillows():
    images = fundus(2)
    image = Image.fromarray(images[0])
    assert np.array_equal(
        corrupt(images, "brightness_down", 5)[0],
        np.asarray(ImageEnhance.Brightness(image).enhance(0.5)),
    )
    assert np.array_equal(
        corrupt(images, "contrast_down", 5)[0],
        np.asarray(ImageEnhance.Contrast(image).enhance(0.4)),
    )
    small = image.resize((int(28 * 0.35), int(28 * 0.35)), Image.BOX).resize((28, 28), Image.BOX)
    assert np.array_equal(corrupt(images, "pixelate", 5)[0], np.asarray(small))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=5)
    assert np.array_equal(
        corrupt(images, "jpeg_compression", 5)[0], np.asarray(Image.open(buffer).convert("RGB"))
    )


def test_gaussian_noise_has_the_defined_spread():
    images = np.full((20, 28, 28, 3), 128, np.uint8)
    out = corrupt(images, "gaussian_noise", 5, seed=3) / 255.0
    assert (out - 128 / 255).std() == pytest.approx(0.20, rel=0.05)
    speckle = corrupt(images, "speckle_noise", 5, seed=3) / 255.0
    assert (speckle - 128 / 255).std() == pytest.approx(0.30 * 128 / 255, rel=0.05)


def test_blur_kernels_sum_to_one_and_scale_with_the_image():
    assert disk(6.0, 0.3).sum() == pytest.approx(1.0)
    assert (disk(6.0, 0.3) > 1e-3).sum() > (disk(0.75, 0.04) > 1e-3).sum()
    taps = motion_kernel(15, 8, 0.0)
    assert len(taps) == 31 and sum(w for _, _, w in taps) == pytest.approx(1.0)
    assert [dy for dy, _, _ in taps[:3]] == [0, 0, 0]  # angle 0: along the rows' axis
    assert len(motion_kernel(15 * 28 / 224, 8 * 28 / 224, 0.0)) == 5


def test_unknown_corruptions_and_severities_are_refused():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(fundus(1), "fog", 1)
    with pytest.raises(ValueError, match="severity 6"):
        corrupt(fundus(1), "pixelate", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(fundus(1).astype(float), "pixelate", 1)


@pytest.mark.parametrize("name", ["pixelate", "jpeg_compression", "defocus_blur"])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_the_same_images_as_the_medmnistc_package_at_224(name, severity):
    registry = pytest.importorskip("medmnistc.corruptions.registry")
    reference = registry.CORRUPTIONS_DS["retinamnist"][name]
    images = fundus(2, size=224)
    theirs = np.stack(
        [reference.apply(Image.fromarray(img), severity=severity - 1) for img in images]
    )
    ours = corrupt(images, name, severity)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


class FixedAngle:
    """A generator whose every uniform draw is ``angle``: the direction of a motion blur."""

    def __init__(self, angle: float) -> None:
        self.angle = angle

    def uniform(self, low: float, high: float) -> float:
        return self.angle


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0])
@pytest.mark.parametrize("severity", [1, 5])
def test_motion_blur_is_imagemagicks_at_224(monkeypatch, angle, severity):
    filters = pytest.importorskip("medmnistc.corruptions.filter")
    from mtcsnn.data.corruptions import PARAMETERS, motion_blur

    monkeypatch.setattr(filters.np.random, "uniform", lambda *a, **k: angle)
    # the package reads ImageMagick's output with np.fromstring, which NumPy 2 removed
    monkeypatch.setattr(filters.np, "fromstring", np.frombuffer, raising=False)
    images = fundus(2, size=224)
    reference = filters.MotionBlur(PARAMETERS["motion_blur"])
    theirs = np.stack(
        [reference.apply(Image.fromarray(img), severity=severity - 1) for img in images]
    )
    ours = motion_blur(images, PARAMETERS["motion_blur"][severity - 1], 1.0, FixedAngle(angle))
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 1.0


@pytest.mark.slow  # a training run's checkpoint, evaluated
def test_eval_writes_the_test_split_under_each_corruption(tiny_checkpoint, tmp_path):
    import csv

    from conftest import TINY_SYNTHETIC, compose_command
    from hydra.core.global_hydra import GlobalHydra

    from mtcsnn.eval import evaluate

    overrides = [f"ckpt_path={tiny_checkpoint}", "data=synthetic", *TINY_SYNTHETIC, "trainer=cpu"]
    try:
        results = evaluate(
            compose_command(
                "eval", [*overrides, "corruptions=[contrast_down,gaussian_noise]"], tmp_path
            )
        )
    finally:
        GlobalHydra.instance().clear()
    rows = list(csv.DictReader((tmp_path / "robustness.csv").open()))
    assert [(r["corruption"], int(r["severity"])) for r in rows] == [("none", 0)] + [
        (name, s) for name in ("contrast_down", "gaussian_noise") for s in SEVERITIES
    ]
    # the clean row is the evaluation's own test pass, reached another way (no Lightning)
    clean = rows[0]
    assert float(clean["auroc"]) == pytest.approx(results["test"]["auroc"], abs=1e-5)
    assert float(clean["acc"]) == pytest.approx(results["test"]["acc"], abs=1e-5)
    assert float(clean["referable_auroc"]) == pytest.approx(
        results["test"]["referable"]["auroc"], abs=1e-5
    )
    assert any(float(r["auroc"]) != float(clean["auroc"]) for r in rows[1:])


@pytest.mark.slow  # eval in a subprocess
def test_an_unknown_corruption_is_one_line_before_anything_loads(tiny_checkpoint, tmp_path):
    from helpers.cli import run_module

    proc = run_module(
        "mtcsnn.eval",
        f"ckpt_path={tiny_checkpoint}",
        "corruptions=[fog]",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "corruptions=['fog']" in error and "contrast_down" in error


@pytest.mark.slow  # two short trainings
def test_a_run_measures_robustness_when_asked_and_a_finished_one_when_resumed(tmp_path):
    import csv

    from conftest import TINY, TINY_SYNTHETIC, compose_train
    from helpers.cli import run_train
    from hydra.core.global_hydra import GlobalHydra

    from mtcsnn.run.training import train

    base = ["data=synthetic", *TINY_SYNTHETIC, *TINY, "trainer.max_epochs=1"]
    try:
        asked = train(compose_train([*base, "corruptions=[contrast_down]"], tmp_path / "a"))
        rows = list(csv.DictReader((tmp_path / "a" / "robustness.csv").open()))
        assert len(rows) == 6 and float(rows[0]["auroc"]) == pytest.approx(
            asked["test"]["auroc"], abs=1e-5
        )
    finally:
        GlobalHydra.instance().clear()
    # a finished run, as a user's command line makes and resumes it
    run_dir = f"hydra.run.dir={tmp_path / 'b'}"
    assert run_train(*base, run_dir).returncode == 0
    assert not (tmp_path / "b" / "robustness.csv").exists()
    before = (tmp_path / "b" / "metrics.json").read_bytes()
    again = run_train(*base, run_dir, "resume=true", "corruptions=[pixelate,motion_blur]")
    assert again.returncode == 0, again.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "b" / "robustness.csv").open()))
    assert [r["corruption"] for r in rows] == ["none"] + ["pixelate"] * 5 + ["motion_blur"] * 5
    assert (tmp_path / "b" / "metrics.json").read_bytes() == before  # nothing else changes


def test_strong_corrupt_corrupts_about_half_the_images_and_follows_the_seed():
    import torch

    from mtcsnn.data.augment import augment, random_corruption

    images = torch.from_numpy(fundus(200)).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(5)
    out = random_corruption(images)
    changed = (out - images).abs().flatten(1).amax(1) > 1 / 255 + 1e-6
    assert out.shape == images.shape and 60 <= int(changed.sum()) <= 140
    torch.manual_seed(5)
    assert torch.equal(random_corruption(images), out)
    assert augment(images, "strong_corrupt").shape == images.shape

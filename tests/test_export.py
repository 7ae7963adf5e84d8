"""``python -m mtcsnn.export``: the exported model gives predict's numbers without mtcsnn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SYNTHETIC, compose_train
from helpers.cli import run_module
from hydra.core.global_hydra import GlobalHydra

from mtcsnn.inference.batch import predict_batch
from mtcsnn.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coral_checkpoint(tmp_path_factory):
    """A CORAL head: its probabilities come from K-1 ordered logits, not a softmax."""
    from mtcsnn.run.training import train

    out = tmp_path_factory.mktemp("coral")
    overrides = ["data=synthetic", "loss=coral", *TINY_SYNTHETIC, *TINY, "trainer.max_epochs=1"]
    train(compose_train(overrides, out))
    GlobalHydra.instance().clear()
    (best,) = (out / "checkpoints").glob("epoch_*.ckpt")
    return best


def images(n: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(n)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def export(tiny_checkpoint, tmp_path, fmt: str, *more: str):
    out = tmp_path / fmt
    result = run_module(
        "mtcsnn.export",
        f"ckpt_path={tiny_checkpoint}",
        f"format={fmt}",
        f"hydra.run.dir={out}",
        *more,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    about = json.loads((out / "model.json").read_text())
    assert about["format"] == fmt and about["input"]["dtype"] == "uint8"
    assert "not a medical device" in about["intended_use"]
    return out / about["model"], about


@pytest.mark.parametrize(
    ("fmt", "head"), [("onnx", "softmax"), ("torchscript", "softmax"), ("onnx", "coral")]
)
def test_the_exported_model_reproduces_predict(request, tmp_path, fmt, head):
    checkpoint = request.getfixturevalue(
        "tiny_checkpoint" if head == "softmax" else "coral_checkpoint"
    )
    path, about = export(checkpoint, tmp_path, fmt)
    ckpt = load_checkpoint(checkpoint)
    size = about["input"]["shape"][-1]
    assert size == ckpt.image_size
    batch = images(7, size)  # a batch size the export never saw
    probs, scores = predict_batch(ckpt.module, list(batch), torch.device("cpu"))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got_probs, got_scores = session.run(["probabilities", "score"], {"images": batch.numpy()})
    else:
        model = torch.jit.load(str(path))
        with torch.no_grad():
            got_probs, got_scores = (t.numpy() for t in model(batch))
    assert got_probs.shape == (7, 5)
    np.testing.assert_allclose(got_probs, probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4)


def test_an_unknown_format_is_refused_naming_the_formats():
    from mtcsnn.errors import ConfigError
    from mtcsnn.inference.export import check_format

    with pytest.raises(ConfigError, match="format='tflite' is not allowed; choose one of: onnx, "):
        check_format("tflite")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_ensemble_averages_its_members_as_predict_does(
    tiny_checkpoint, second_checkpoint, coral_checkpoint, tmp_path, fmt
):
    members = [tiny_checkpoint, second_checkpoint, coral_checkpoint]
    path, about = export(f"[{','.join(str(m) for m in members)}]", tmp_path, fmt)
    assert about["source_checkpoints"] == [str(m) for m in members]
    modules = [load_checkpoint(m).module for m in members]
    batch = images(5, about["input"]["shape"][-1])
    want_probs, want_scores = predict_batch(modules, list(batch), torch.device("cpu"))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got_probs, got_scores = session.run(["probabilities", "score"], {"images": batch.numpy()})
    else:
        with torch.no_grad():
            got_probs, got_scores = (t.numpy() for t in torch.jit.load(str(path))(batch))
    np.testing.assert_allclose(got_probs, want_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_scores, want_scores.numpy(), atol=1e-4)
    # the average of the members, not any one of them
    one = [predict_batch(m, list(batch), torch.device("cpu"))[0].numpy() for m in modules]
    np.testing.assert_allclose(got_probs, np.mean(one, axis=0), atol=1e-4)
    assert all(np.abs(got_probs - p).max() > 1e-3 for p in one)


def test_a_calibrated_export_gives_predicts_calibrated_probabilities_and_threshold(
    tiny_checkpoint, tmp_path
):
    import onnxruntime

    from mtcsnn.grading.calibration import scaled

    path, about = export(tiny_checkpoint, tmp_path, "onnx", "calibrated=true")
    val = json.loads((tiny_checkpoint.parents[1] / "metrics.json").read_text())["val"]
    chosen = val["temperature_scaled"]
    assert about["referral"] == {
        "referable": "sum of probabilities of grades >= 2",
        "cut": 2,
        "threshold": chosen["referable"]["threshold"],
        "calibrated": True,
        "temperature": chosen["temperature"],
    }
    ckpt = load_checkpoint(tiny_checkpoint)
    batch = images(6, about["input"]["shape"][-1])
    raw, _ = predict_batch(ckpt.module, list(batch), torch.device("cpu"))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"images": batch.numpy()})
    np.testing.assert_allclose(got, scaled(raw, chosen["temperature"]).numpy(), atol=1e-5)
    assert np.abs(got - raw.numpy()).max() > 1e-4  # the temperature did change them


def test_an_ensemble_has_no_calibrated_export(tiny_checkpoint, second_checkpoint, tmp_path):
    result = run_module(
        "mtcsnn.export",
        f"ckpt_path=[{tiny_checkpoint},{second_checkpoint}]",
        "calibrated=true",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "calibrated=True" in last and "ensemble" in last
    assert "Traceback" not in result.stderr and not (tmp_path / "model.onnx").exists()

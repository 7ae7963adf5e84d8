"""Referral on new images: the thresholds val chose travel in the checkpoint to ``predict``."""

import csv
import json

import numpy as np
import pytest
import torch
from helpers.cli import run_module
from PIL import Image

from mtcsnn.grading.calibration import scaled
from mtcsnn.inference.batch import predict_inputs
from mtcsnn.run.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.slow  # predict runs in a subprocess, as users run it


def metrics_of(checkpoint):
    return json.loads((checkpoint.parent.parent / "metrics.json").read_text())


def test_a_run_keeps_the_thresholds_val_chose_in_its_checkpoint(tiny_checkpoint):
    val = metrics_of(tiny_checkpoint)["val"]
    scaled = val["temperature_scaled"]
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert state["mtcsnn_referral"] == [
        {
            "cut": cut,
            "threshold": val[key]["threshold"],
            "scaled_threshold": scaled[key]["threshold"],
        }
        for cut, key in ((2, "referable"), (3, "referable_3"))
    ]
    assert state["mtcsnn_temperature"] == scaled["temperature"]
    ckpt = load_checkpoint(tiny_checkpoint)
    assert [(r.cut, r.threshold) for r in ckpt.referral] == [
        (2, val["referable"]["threshold"]),
        (3, val["referable_3"]["threshold"]),
    ]
    assert ckpt.temperature == scaled["temperature"]


@pytest.mark.parametrize("calibrated", [False, True])
def test_predict_writes_p_referable_and_the_referral_at_val_s_threshold(
    tiny_checkpoint, tmp_path, calibrated
):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    out = tmp_path / "predictions.csv"
    proc = run_module(
        "mtcsnn.predict",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{photos}]",
        f"output={out}",
        "progress=false",
        f"calibrated={str(calibrated).lower()}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    val = metrics_of(tiny_checkpoint)["val"]
    if calibrated:
        val = val["temperature_scaled"]
    threshold = val["referable"]["threshold"]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12
    if calibrated:  # the model's own probabilities, at the temperature val chose
        ckpt = load_checkpoint(tiny_checkpoint)
        raw, _ = predict_inputs(ckpt.module, [str(photos)], ckpt.image_size, torch.device("cpu"))
        by_name = {r[0]: np.array([float(v) for v in r[2:7]]) for r in raw}
        for row in rows:
            want = scaled(by_name[row["path"]][None], val["temperature"]).numpy()[0]
            got = [float(row[f"prob_{g}"]) for g in range(5)]
            assert got == pytest.approx(want, abs=1e-6)
    for row in rows:
        referable = sum(float(row[f"prob_{g}"]) for g in (2, 3, 4))
        assert float(row["referable"]) == pytest.approx(referable, abs=1e-6)
        assert row["refer"] == str(int(float(row["referable"]) >= threshold))


def crafted(checkpoint, tmp_path, key: str, value: object):
    """A copy of ``checkpoint`` whose ``key`` holds ``value``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state[key] = value
    path = tmp_path / "crafted.ckpt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "record",
    [
        "refer everyone",
        [{"cut": 9, "threshold": 0.5}],
        [{"cut": 2, "threshold": float("nan")}],
        [{"cut": 2, "threshold": 1.5}],
        [{"cut": 2, "threshold": 0.5, "run": "os.system"}],
        [{"cut": True, "threshold": 0.5}],
        [{"cut": 2, "threshold": 0.5}] * 100,
        [{"cut": 2, "threshold": 0.5, "scaled_threshold": -1.0}],
    ],
)
def test_a_checkpoint_whose_referral_record_is_malformed_is_refused(
    tiny_checkpoint, tmp_path, record
):
    with pytest.raises(CheckpointError, match="referral"):
        load_checkpoint(crafted(tiny_checkpoint, tmp_path, "mtcsnn_referral", record))


def test_predict_says_in_one_line_why_a_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    record = [{"cut": 2, "threshold": "0.5"}]
    path = crafted(tiny_checkpoint, tmp_path, "mtcsnn_referral", record)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    proc = run_module(
        "mtcsnn.predict",
        f"ckpt_path={path}",
        f"inputs=[{tmp_path / 'a.png'}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "referral threshold" in errors[0], proc.stderr[-2000:]


@pytest.mark.parametrize("temperature", ["hot", float("nan"), 1e9, -1.0, [1.0]])
def test_a_checkpoint_whose_temperature_is_malformed_is_refused(
    tiny_checkpoint, tmp_path, temperature
):
    with pytest.raises(CheckpointError, match="temperature"):
        load_checkpoint(crafted(tiny_checkpoint, tmp_path, "mtcsnn_temperature", temperature))

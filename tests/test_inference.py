"""Using a trained checkpoint: mtcsnn.eval, mtcsnn.predict, mtcsnn.explain."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from helpers.cli import run_module
from helpers.metrics import flat
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from mtcsnn.run.checkpoint import CheckpointError, load_checkpoint
from mtcsnn.run.training import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, request) -> Path:
    """One short real-data run; its checkpoint is what the tools are used on."""
    data_dir = request.getfixturevalue("real_data_dir")
    out = tmp_path_factory.mktemp("real_run")
    cfg = compose_train(
        ["data=retinamnist", f"data.root={data_dir}", "data.download=false", *TINY], out
    )
    train(cfg)
    GlobalHydra.instance().clear()
    return out


def checkpoint_of(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"])


def run_tool(tool: str, run_dir: Path, inputs: str, out: Path):
    """``python -m mtcsnn.<tool>`` on the checkpoint of ``run_dir``, writing into ``out``."""
    return run_module(
        f"mtcsnn.{tool}",
        f"ckpt_path={checkpoint_of(run_dir)}",
        f"inputs=[{inputs}]",
        f"hydra.run.dir={out}",
    )


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_eval_reproduces_the_training_runs_test_metrics(real_run, tmp_path):
    proc = run_module(
        "mtcsnn.eval", f"ckpt_path={checkpoint_of(real_run)}", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = json.loads((real_run / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    for stage in ("val", "test"):
        assert flat(evaluated[stage]) == pytest.approx(flat(trained[stage]), abs=1e-6)
    assert evaluated["test_confusion"] == trained["test_confusion"]
    assert evaluated["best_epoch_number"] == trained["best_epoch_number"]
    assert (tmp_path / "test_predictions.csv").read_text() == (
        real_run / "test_predictions.csv"
    ).read_text()


def test_predict_big_jpeg_and_png_and_reports_the_corrupt_file(real_run, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)).save(
        inputs / "fundus.jpg", quality=85
    )
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(inputs / "b.png")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "out"
    proc = run_tool("predict", real_run, str(inputs), out)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "1 input(s) could not be read" in proc.stderr
    rows = read_csv(out / "predictions.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["b.png", "fundus.jpg"]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in range(5)]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert int(row["pred"]) == int(np.argmax(probs))
        float(row["score"])
    failures = read_csv(out / "failures.csv")
    assert [Path(f["input"]).name for f in failures] == ["corrupt.png"]
    assert failures[0]["reason"]


def test_predict_on_test_split_images_gives_the_test_predictions(real_run, tmp_path, real_data_dir):
    test_images = np.load(real_data_dir / "retinamnist.npz")["test_images"][:40]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(test_images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    npz = tmp_path / "subset.npz"
    np.savez(npz, test_images=test_images)
    out = tmp_path / "out"
    proc = run_tool("predict", real_run, f"{folder},{npz}", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_csv(out / "predictions.csv")
    expected = read_csv(real_run / "test_predictions.csv")[:40]
    from_png, from_npz = rows[:40], rows[40:]
    assert [r["path"] for r in from_npz] == [f"{npz}:test_images[{i}]" for i in range(40)]
    for got in (from_png, from_npz):
        assert [int(r["pred"]) for r in got] == [int(r["pred"]) for r in expected]
        got_probs = np.array([[float(r[f"prob_{c}"]) for c in range(5)] for r in got])
        want = np.array([[float(r[f"prob_{c}"]) for c in range(5)] for r in expected])
        assert np.allclose(got_probs, want, atol=1e-4)


def test_explain_writes_one_overlay_per_image(real_run, tmp_path, real_data_dir):
    image = np.load(real_data_dir / "retinamnist.npz")["test_images"][0]
    Image.fromarray(image).save(tmp_path / "eye.png")
    out = tmp_path / "out"
    proc = run_tool("explain", real_run, str(tmp_path / "eye.png"), out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (png,) = out.glob("*_gradcam.png")
    assert Image.open(png).size[0] > 100


def test_a_file_that_is_not_an_mtcsnn_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    for name in ("other.ckpt", "text.ckpt", "missing.ckpt"):
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name)
    proc = run_module(
        "mtcsnn.eval", f"ckpt_path={tmp_path / 'other.ckpt'}", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 1
    assert "is not an mtcsnn checkpoint" in proc.stderr and "Traceback" not in proc.stderr

"""MedMNIST+ sizes (64/128/224) end to end, on small files written in the medmnist format."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mtcsnn.data import RetinaMNISTDataModule
from mtcsnn.run.training import train

SPLITS = {"train": 20, "val": 10, "test": 10}


def write_medmnist_npz(folder, size: int) -> None:
    """A tiny retinamnist_<size>.npz with medmnist's keys, dtypes and shapes."""
    rng = np.random.default_rng(size)
    arrays = {}
    for split, n in SPLITS.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).reshape(-1, 1).astype(np.uint8)
    np.savez(folder / f"retinamnist_{size}.npz", **arrays)


@pytest.mark.parametrize("size", [64, 128, 224])
def test_data_module_reads_each_size(tmp_path, size):
    write_medmnist_npz(tmp_path, size)
    dm = RetinaMNISTDataModule(
        root=str(tmp_path), size=size, download=False, verify_md5=False, batch_size=8
    )
    dm.setup()
    for split, n in SPLITS.items():
        images, grades = dm.splits[split]
        assert images.shape == (n, 3, size, size) and images.dtype.is_floating_point is False
        assert grades.tolist() == [i % 5 for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 224])
def test_train_at_medmnist_plus_size(tiny_cfg, tmp_path, size):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_medmnist_npz(data_dir, size)
    cfg = tiny_cfg(
        f"data.root={data_dir}",
        f"data.size={size}",
        "data.download=false",
        "data.verify_md5=false",  # a file made by the test
        "data.batch_size=8",
        "trainer.max_epochs=1",
        data="retinamnist",
    )
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["data"]["size"] == size
    assert sum(map(sum, metrics["test_confusion"])) == SPLITS["test"]
    assert set(metrics["test"]) >= {"auroc", "acc", "kappa", "mae"}


def test_cifar_stem_at_224_warns_before_training(tiny_cfg, caplog, monkeypatch):
    import mtcsnn.run.training as train_module

    # no 224px training here
    monkeypatch.setattr(train_module, "fit_and_test", lambda cfg, test=True, refit=None: {})
    with caplog.at_level(logging.WARNING, logger="mtcsnn.run.training"):
        train(tiny_cfg("model.net.stem=cifar", "data.size=224"))
    assert "model.net.stem=cifar at data.size=224" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtcsnn.run.training"):
        train(tiny_cfg("data.size=224"))  # the imagenet stem: no warning
    assert "stem=cifar" not in caplog.text

"""Several checkpoints as one model: eval and predict average their class probabilities."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_SYNTHETIC, compose_train
from helpers.cli import run_module
from hydra.core.global_hydra import GlobalHydra
from sklearn.metrics import roc_auc_score

from mtcsnn.data import SyntheticDataModule
from mtcsnn.inference.batch import predict_batch
from mtcsnn.run.checkpoint import CheckpointError, load_checkpoint, load_checkpoints


@pytest.fixture
def two_seeds(tiny_checkpoint, second_checkpoint) -> list:
    """The shared tiny run and the same run with another seed: two different members."""
    return [tiny_checkpoint, second_checkpoint]


def test_an_ensemble_predicts_the_mean_of_its_members(two_seeds):
    members = [c.module for c in load_checkpoints([str(p) for p in two_seeds])]
    images = list(torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8))
    cpu = torch.device("cpu")
    probs, scores = predict_batch(members, images, cpu)
    alone = [predict_batch(m, images, cpu) for m in members]
    assert torch.allclose(probs, (alone[0][0] + alone[1][0]) / 2)
    assert torch.allclose(scores, (alone[0][1] + alone[1][1]) / 2)
    assert torch.allclose(probs.sum(1), torch.ones(6))


def test_an_ensemble_of_other_image_sizes_is_refused(two_seeds, tmp_path):
    from mtcsnn.run.training import train

    overrides = ["data=synthetic", *TINY_SYNTHETIC, *TINY, "trainer.max_epochs=1", "data.size=64"]
    train(compose_train(overrides, tmp_path))
    GlobalHydra.instance().clear()
    (other,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    with pytest.raises(CheckpointError, match=r"one size; these take \[28, 64\]"):
        load_checkpoints([str(two_seeds[0]), str(other)])


@pytest.mark.slow
def test_eval_of_an_ensemble_scores_the_averaged_probabilities(two_seeds, tmp_path):
    result = run_module(
        "mtcsnn.eval",
        f"ckpt_path=[{two_seeds[0]},{two_seeds[1]}]",
        "data=synthetic",  # the data come from the command line, not from the checkpoints
        *TINY_SYNTHETIC,
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["members"]) == 2 and metrics["seed"] is None
    with open(tmp_path / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    grades = np.array([int(r["grade"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(5)] for r in rows])
    assert metrics["test"]["auroc"] == pytest.approx(
        roc_auc_score(grades, probs, multi_class="ovr"), abs=1e-5
    )
    # the averaged probabilities are the members' own, on the same test images
    first = load_checkpoint(two_seeds[0])
    data = SyntheticDataModule(num_train=40, num_val=20, num_test=20, batch_size=16)
    data.setup()
    images, test_grades = data.splits["test"]
    members = [first.module, load_checkpoint(two_seeds[1]).module]
    expected, _ = predict_batch(members, list(images), torch.device("cpu"))
    assert np.array_equal(grades, test_grades.numpy())
    assert np.allclose(probs, expected.numpy(), atol=1e-6)

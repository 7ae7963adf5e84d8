"""Runs that fail cleanly: divergence, bad data files, and the same numbers from the same seed."""

from __future__ import annotations

import json

import pytest
import torch

from mtcsnn.errors import DivergenceError
from mtcsnn.losses import MultiTaskLoss
from mtcsnn.train import train


class NanAfterFourSteps(MultiTaskLoss):
    """The MTCSNN loss, turned NaN from the fifth training step on (a stand-in divergence)."""

    calls = 0

    def forward(self, out_a, out_b, grade_a, grade_b):
        terms = super().forward(out_a, out_b, grade_a, grade_b)
        NanAfterFourSteps.calls += 1
        if NanAfterFourSteps.calls > 4:
            terms["loss"] = terms["loss"] * torch.tensor(float("nan"))
        return terms


def test_divergence_stops_with_epoch_and_step_and_keeps_the_best_checkpoint(tiny_cfg, tmp_path):
    NanAfterFourSteps.calls = 0
    # 40 images, 8 pairs a batch: 3 steps an epoch, so step 4 is in the second epoch
    cfg = tiny_cfg("loss._target_=test_robustness.NanAfterFourSteps", "trainer.max_epochs=4")
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 1, step 4"):
        train(cfg)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_000.ckpt"]
    assert not (tmp_path / "metrics.json").exists()


def test_same_config_and_seed_give_identical_numbers(tiny_cfg, tmp_path):
    written = []
    for _ in range(2):
        train(tiny_cfg("seed=11", "trainer.deterministic=true"))
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        written.append(
            (
                metrics["val"],
                metrics["test"],
                metrics["best_epoch"],
                (tmp_path / "test_predictions.csv").read_text(),
            )
        )
    assert written[0] == written[1]


@pytest.mark.slow
def test_a_failing_sweep_job_is_recorded_and_the_others_still_run(tmp_path):
    from cli import run_train

    from mtcsnn.report import main as report_main

    sweep = tmp_path / "sweep"
    proc = run_train(
        "--multirun",
        "experiment=smoke",
        "data.num_train=1,40",  # one image cannot form a pair: job 0 fails
        "data.num_val=20",
        "data.num_test=20",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 1
    assert "1 of 2 sweep jobs failed" in proc.stderr
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert "cannot form pairs" in failed["error"]
    assert not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "1" / "metrics.json").exists()  # the job after the failure ran
    assert report_main([str(sweep), "--bootstrap", "20"]) == 0
    text = (sweep / "results.md").read_text()
    assert "## Failed runs" in text and "cannot form pairs" in text.split("## Failed runs")[1]

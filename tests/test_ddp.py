"""Lightning DDP with 2 CPU processes (gloo) under Hydra: one set of files, all images once."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers.cli import run_train

from mtcsnn.data.pairing import PairSampler

pytestmark = pytest.mark.slow

SMALL = [
    "data=synthetic",
    "data.num_train=40",
    "data.num_val=20",
    "data.num_test=20",
    "data.batch_size=16",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
]


def check_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == list(range(20))  # every test image once
    assert sum(map(sum, metrics["test_confusion"])) == 20  # metrics over both processes
    with open(run_dir / "val_predictions.csv") as f:
        val_rows = list(csv.DictReader(f))
    for epoch in (0, 1):  # every val image once an epoch, both processes' shares together
        seen = [int(r["index"]) for r in val_rows if r["epoch"] == str(epoch)]
        assert seen == list(range(20))
    assert not list(run_dir.glob(".*.tmp"))
    return metrics


def test_ddp_two_processes_write_one_run_like_one_process(tmp_path):
    ddp = run_train(*SMALL, "trainer=ddp", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "MEMBER: 2/2" in ddp.stdout + ddp.stderr
    single = run_train(*SMALL, f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_metrics, single_metrics = check_run(tmp_path / "ddp"), check_run(tmp_path / "single")
    assert set(ddp_metrics) == set(single_metrics)
    assert set(ddp_metrics["test"]) == set(single_metrics["test"])
    assert ddp_metrics["epochs"] == single_metrics["epochs"] == 2
    assert ddp_metrics["config"]["trainer"]["devices"] == 2
    # one output dir for the run: the second process wrote into it, not into a dir of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    assert (tmp_path / "ddp" / "train_ddp_rank_1.log").exists()


def test_ddp_in_a_multirun_runs_each_job_once_in_its_own_dir(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(
        "--multirun", *SMALL, "trainer=ddp", "loss=ce,mtcsnn", f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    losses = [check_run(sweep / job)["choices"]["loss"] for job in jobs]
    assert losses == ["ce", "mtcsnn"]


def test_pair_sampler_splits_each_global_batch_between_processes():
    whole = PairSampler(40, 8, seed=3)
    parts = [PairSampler(40, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in (whole, *parts):
        sampler.set_epoch(5)
    batches = list(whole)
    shares = [list(p) for p in parts]
    assert len(shares[0]) == len(shares[1]) == len(batches)  # same number of steps
    for batch, a, b in zip(batches, *shares, strict=True):
        assert (batch == a.new_tensor(a.tolist() + b.tolist())).all()

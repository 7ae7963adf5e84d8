"""A refit (``refit_from=<a cross-validation sweep>``): one model on every pooled image, for the
folds' median epoch under the folds' schedule, its val figures the sweep's out-of-fold ones."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from helpers.cli import run_module, run_train
from sklearn.metrics import roc_auc_score

from mtcsnn.data import SyntheticDataModule
from mtcsnn.grading.calibration import fit_temperature
from mtcsnn.grading.referral import TEMPERATURE_KEY

SMALL = (
    "data=synthetic",
    "data.num_train=40",
    "data.num_val=20",
    "data.num_test=20",
    "data.batch_size=16",
    "trainer=cpu",
    "trainer.max_epochs=6",  # the schedule (lr x0.1 after epochs 3 and 4.5 -> 5)
    "trainer.enable_progress_bar=false",
    "logger=csv",
)


def test_fold_all_trains_on_the_whole_pool_and_leaves_test_as_it_is():
    official = SyntheticDataModule(num_train=40, num_val=20, num_test=20, batch_size=16)
    refit = SyntheticDataModule(
        num_train=40, num_val=20, num_test=20, batch_size=16, folds=3, fold="all"
    )
    official.setup()
    refit.setup()
    pool = torch.cat([official.splits["train"][1], official.splits["val"][1]])
    assert torch.equal(refit.ids["train"], torch.arange(60))
    assert torch.equal(refit.splits["train"][1], pool)
    assert torch.equal(refit.splits["test"][0], official.splits["test"][0])


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: "), result.stderr
    return line


def test_training_on_every_fold_by_hand_is_refused_it_leaves_nothing_to_validate(tmp_path):
    line = _one_error_line(
        run_train(*SMALL, "data.folds=3", "data.fold=all", f"hydra.run.dir={tmp_path}")
    )
    assert "data.fold='all'" in line and "refit_from=" in line
    assert not (tmp_path / "checkpoints").exists()


def _out_of_fold(sweep, loss: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grades and probabilities of the seed's folds at their chosen epochs, by hand."""
    rows = []
    for path in sweep.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        if metrics["choices"]["loss"] != loss or metrics["seed"] != seed:
            continue
        epoch = metrics["best_epoch_number"] - 1
        with open(path.parent / "val_predictions.csv") as file:
            rows += [r for r in csv.DictReader(file) if int(r["epoch"]) == epoch]
    rows.sort(key=lambda r: int(r["index"]))
    assert [int(r["index"]) for r in rows] == list(range(60))
    grades = np.array([int(r["grade"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(5)] for r in rows])
    return grades, probs


@pytest.mark.slow
def test_a_refit_trains_the_folds_median_epoch_and_takes_its_val_from_out_of_fold(tmp_path):
    sweep, out = tmp_path / "cv", tmp_path / "refit"
    result = run_train(
        "--multirun", "experiment=cv", *SMALL, "data.folds=3", "data.fold=range(0,3)",
        "loss=ce,mtcsnn", "seed=1,2", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_train(
        *SMALL, "loss=mtcsnn", "seed=2", f"refit_from={sweep}", f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    chosen = [
        json.loads(p.read_text())["best_epoch_number"]
        for p in sweep.glob("*/metrics.json")
        if json.loads(p.read_text())["choices"]["loss"] == "mtcsnn"
    ]
    assert len(chosen) == 6  # both seeds' three folds
    epochs = int(np.floor(np.median(chosen) + 0.5))
    assert metrics["refit"]["epochs"] == epochs == metrics["best_epoch_number"]
    assert sorted(metrics["refit"]["fold_epochs"]) == sorted(chosen)
    assert metrics["config"]["data"]["fold"] == "all" and metrics["config"]["data"]["folds"] == 3
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"epoch_{epochs:03d}.ckpt"]
    assert not (out / "val_predictions.csv").exists()  # it never validated

    # the lr of each trained epoch follows the 6-epoch schedule, whatever epoch it stops at
    with open(out / "csv" / "metrics.csv") as file:  # logged as each epoch starts
        lrs = [float(r["lr-Adam"]) for r in csv.DictReader(file) if r["lr-Adam"]]
    base = metrics["config"]["model"]["optimizer"]["lr"]
    milestones = metrics["config"]["model"]["scheduler"]["milestones"]
    assert milestones == [3, 4] and len(lrs) == epochs
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(base * 0.1 ** sum(m <= epoch for m in milestones))

    # val: the out-of-fold predictions of seed 2's folds; temperature and thresholds fitted there
    grades, probs = _out_of_fold(sweep, "mtcsnn", 2)
    auroc = roc_auc_score(grades, probs, multi_class="ovr", labels=range(5))
    assert metrics["val"]["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert metrics["val"]["acc"] == pytest.approx(np.mean(probs.argmax(1) == grades))
    temperature = fit_temperature(grades, probs)
    assert metrics["val"]["temperature_scaled"]["temperature"] == pytest.approx(temperature)
    checkpoint = torch.load(out / "checkpoints" / f"epoch_{epochs:03d}.ckpt", weights_only=True)
    assert checkpoint[TEMPERATURE_KEY] == pytest.approx(temperature)
    assert "optimizer_states" not in checkpoint
    tested = np.genfromtxt(out / "test_predictions.csv", delimiter=",", names=True)
    assert len(tested) == 20

    # eval validates a fold's model on its own fold, and refuses a refit on the data it saw
    fold_run = next(
        p.parent
        for p in sweep.glob("*/metrics.json")
        if json.loads(p.read_text())["config"]["data"]["fold"] == 1
    )
    fold_metrics = json.loads((fold_run / "metrics.json").read_text())
    (fold_ckpt,) = (fold_run / "checkpoints").glob("epoch_*.ckpt")
    evaluated = run_module(
        "mtcsnn.eval", f"ckpt_path={fold_ckpt}", *SMALL[:4], f"hydra.run.dir={tmp_path / 'ev'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "val is that fold here" in evaluated.stdout + evaluated.stderr
    val = json.loads((tmp_path / "ev" / "metrics.json").read_text())["val"]
    assert val["auroc"] == pytest.approx(fold_metrics["val"]["auroc"], abs=1e-6)
    line = _one_error_line(
        run_module(
            "mtcsnn.eval",
            f"ckpt_path={out / 'checkpoints' / f'epoch_{epochs:03d}.ckpt'}",
            *SMALL[:4],
            f"hydra.run.dir={tmp_path / 'ev_refit'}",
        )
    )
    assert "refit on every train and val image" in line
    shutil.rmtree(tmp_path / "ev")  # not a training run of the report below

    # the report keeps it apart from the fold sets it came from
    report = run_module("mtcsnn.report", str(tmp_path), "--bootstrap=20")
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    cv = {r["configuration"]: r for r in summary["cross_validation"]["configurations"]}
    assert set(cv) == {"loss=ce, data.fold=each", "loss=mtcsnn, data.fold=each"}
    page = (tmp_path / "results.md").read_text()
    assert "| loss=mtcsnn, data.fold=all | 1 |" in page

    # what the sweep cannot give is one line each, and nothing is trained
    for args, says in [
        (("loss=mtcsnn", "seed=5"), "with seed 1, 2, not 5"),
        (("loss=mtcsnn", "seed=1", "model.net.dropout=0.1"), "model.net.dropout=0.1 (sweep: 0.3)"),
        (("loss=coral", "seed=1"), "loss=coral (sweep: "),
        (("loss=mtcsnn", "seed=1", "data.folds=3"), "data.folds=3 is not allowed"),
    ]:
        failed = tmp_path / f"failed_{len(says)}"
        line = _one_error_line(
            run_train(*SMALL, *args, f"refit_from={sweep}", f"hydra.run.dir={failed}")
        )
        assert says in line, line
        assert not (failed / "checkpoints").exists()
    for where, says in [(tmp_path / "nowhere", "no such folder"), (out, "no whole cross-valid")]:
        line = _one_error_line(
            run_train(*SMALL, f"refit_from={where}", f"hydra.run.dir={tmp_path / 'x'}")
        )
        assert says in line, line

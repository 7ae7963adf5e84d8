import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import ONE_SMALL_EPOCH, run_train
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mtcsnn.grading.score_decoding import fit_thresholds
from mtcsnn.reporting.predictions import read_val_predictions, read_val_scores
from mtcsnn.run.checkpoint import load_checkpoint
from mtcsnn.run.training import train


def read_predictions(path: Path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    grades = np.array([int(r["grade"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(5)] for r in rows])
    return rows, grades, probs


def check_run_dir(run_dir: Path, num_test: int) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for stage in ("val", "test"):
        assert {"acc", "auroc", "kappa", "mae", "recall_0", "recall_4"} <= set(metrics[stage])
    assert {"config", "seed", "epochs", "wall_time_s", "versions", "best_epoch_number"} <= set(
        metrics
    )
    assert np.array(metrics["test_confusion"]).sum() == num_test
    rows, grades, probs = read_predictions(run_dir / "test_predictions.csv")
    assert [int(r["index"]) for r in rows] == list(range(num_test))
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    # the file and the reported metrics describe the same predictions
    pred = probs.argmax(1)
    assert metrics["test"]["acc"] == pytest.approx(accuracy_score(grades, pred), abs=1e-6)
    assert metrics["test"]["kappa"] == pytest.approx(
        cohen_kappa_score(grades, pred, weights="quadratic"), abs=1e-4
    )
    if len(set(grades)) == 5:
        auroc = roc_auc_score(grades, probs, multi_class="ovr", average="macro")
        assert metrics["test"]["auroc"] == pytest.approx(auroc, abs=1e-3)
    return metrics


TERMS = {
    "ce": ("ce_a", "ce_b"),
    "mtcsnn": ("ce_a", "ce_b", "reg"),
    "coral": ("coral_a", "coral_b"),
    "corn": ("corn_a", "corn_b"),
    "regression": ("mse_a", "mse_b"),
}
TARGETS = {
    "ce": "PairCrossEntropyLoss",
    "mtcsnn": "MultiTaskLoss",
    "coral": "CoralLoss",
    "corn": "CornLoss",
    "regression": "GradeRegressionLoss",
}


@pytest.mark.parametrize("loss", sorted(TERMS))
def test_synthetic_train_writes_metrics_and_predictions(tiny_cfg, tmp_path, loss):
    cfg = tiny_cfg(f"loss={loss}", "seed=5")
    results = train(cfg)
    metrics = check_run_dir(tmp_path, num_test=20)
    assert metrics["test"] == results["test"]
    assert metrics["seed"] == 5 and metrics["epochs"] == 2
    assert metrics["choices"]["loss"] == loss and metrics["choices"]["data"] == "synthetic"
    assert metrics["config"]["loss"]["_target_"].endswith(TARGETS[loss])
    assert metrics["best_epoch_number"] in (1, 2)  # counted from 1, as the console counts
    best = Path(metrics["best_checkpoint"])
    assert best.exists() and best.name == f"epoch_{metrics['best_epoch_number']:03d}.ckpt"
    logged = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    for term in ("train/loss", "val/auroc", *(f"train/{t}" for t in TERMS[loss])):
        assert term in logged
    assert ("train/reg" in logged) == (loss == "mtcsnn")
    assert "train/pair_diff_0" in logged
    # the score as a grader, where the loss trains the score
    assert ("score_decoding" in metrics) == (loss in ("mtcsnn", "regression"))
    if "score_decoding" in metrics:
        for way in ("thresholds", "pairwise"):
            assert set(metrics["score_decoding"][way]["test"]) == {
                "acc",
                "kappa",
                "mae",
                "acc_within1",
            }
    check_val_predictions(tmp_path, metrics, epochs=2)
    # the checkpoint rebuilds with the loss's own head and gives the written predictions
    ckpt = load_checkpoint(metrics["best_checkpoint"])
    assert type(ckpt.module.net.classifier) is type(results_model_head(loss))


def check_val_predictions(run_dir: Path, metrics: dict, epochs: int) -> None:
    """val_predictions.csv: every epoch's val probabilities, the best epoch's giving val AUROC."""
    grades, probs = read_val_predictions(run_dir / "val_predictions.csv")
    assert probs.shape == (epochs, len(grades), 5)
    assert np.allclose(probs.sum(2), 1, atol=1e-4)
    if len(set(grades)) == 5:  # the kept checkpoint is the best epoch's: the same val AUROC
        best = probs[metrics["best_epoch_number"] - 1]  # the file counts from 0
        auroc = roc_auc_score(grades, best, multi_class="ovr", average="macro")
        assert metrics["val"]["auroc"] == pytest.approx(auroc, abs=1e-3)
    # the tested epoch's val scores: the thresholds the run fitted on val are fitted on them
    val = read_val_scores(run_dir / "val_predictions.csv", metrics["best_epoch_number"] - 1)
    assert val is not None and np.array_equal(val[0], grades)
    decoding = metrics.get("score_decoding", {}).get("thresholds")
    if decoding:
        direction, thresholds = fit_thresholds(torch.from_numpy(val[1]), torch.from_numpy(grades))
        assert direction == decoding["direction"]
        assert thresholds.tolist() == pytest.approx(decoding["values"], abs=1e-4)


def results_model_head(loss: str):
    from coral_pytorch.layers import CoralLayer

    return CoralLayer(4, 5) if loss == "coral" else torch.nn.Linear(1, 1)


@pytest.mark.slow
def test_short_real_data_train(tiny_cfg, tmp_path, real_data_dir):
    cfg = tiny_cfg(
        f"data.root={real_data_dir}",
        "data.download=false",
        "trainer.max_epochs=2",
        data="retinamnist",
    )
    train(cfg)
    metrics = check_run_dir(tmp_path, num_test=400)
    assert sum(map(sum, metrics["test_confusion"])) == 400
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0


@pytest.mark.slow
def test_multirun_smoke_gives_each_job_its_own_metrics(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(
        "--multirun",
        "experiment=smoke",
        "loss=ce,mtcsnn",
        "data.num_train=40",
        *ONE_SMALL_EPOCH,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert metrics["epochs"] == 1
    losses = {
        json.loads((sweep_dir / j / "metrics.json").read_text())["config"]["loss"]["_target_"]
        for j in ("0", "1")
    }
    assert len(losses) == 2


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_at_once_with_split_threads(tmp_path):
    import os

    sweep_dir = tmp_path / "sweep"
    proc = run_train(
        "--multirun",
        "experiment=smoke",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        "data.num_train=40",
        *ONE_SMALL_EPOCH,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr  # the launcher that ran the jobs
    for job, seed in (("0", 1), ("1", 2)):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert metrics["seed"] == seed
        assert metrics["threads"] == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model.net.backbone=resnet19"], ["model.net.backbone", "resnet18, resnet34, resnet50"]),
        (["loss.lam=-1"], ["loss.lam", ">= 0"]),
        (["data.batch_size=9"], ["data.batch_size", "even"]),
        (["threads=0"], ["threads", "integer >= 1"]),
    ],
)
def test_cli_config_errors_are_one_clear_message(tmp_path, args, expected):
    proc = run_train("experiment=smoke", f"hydra.run.dir={tmp_path}", *args)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_cli_missing_dataset_offline(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_train(
        "data.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"MTCSNN_DATA_DIR": str(empty)},
    )
    assert proc.returncode != 0
    assert str(empty) in proc.stderr
    assert "retinamnist.npz" in proc.stderr and "MTCSNN_DATA_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "metrics.json").exists()
    # the folder it leaves says that it failed, and why
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert "retinamnist.npz" in failed["error"] and failed["type"] == "DataError"


def test_hard_pairing_uses_the_scores_seen_in_training(tiny_cfg, tmp_path):
    train(tiny_cfg("data.pairing=hard", "trainer.max_epochs=3"))
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/pair_diff_0")]
    shares = [[float(r[f"train/pair_diff_{d}"]) for d in range(5)] for r in rows]
    assert len(shares) == 3 and all(sum(s) == pytest.approx(1) for s in shares)
    # epoch 0 has no scores yet (a random matching); later epochs pair different grades only
    assert shares[1][0] == 0 and shares[2][0] == 0


def test_a_finished_run_keeps_only_the_best_weights(tiny_cfg, tmp_path):
    # every epoch writes last.ckpt, so it exists while the run trains
    train(tiny_cfg("callbacks.last_checkpoint.every_n_epochs=1"))
    (best,) = (tmp_path / "checkpoints").iterdir()
    assert best.name.startswith("epoch_")
    state = torch.load(best, weights_only=True)
    assert set(state) <= {
        "state_dict",
        "mtcsnn_spec",
        "mtcsnn_config",
        "mtcsnn_referral",  # the referral thresholds and the temperature val chose
        "mtcsnn_temperature",
        "epoch",
        "global_step",
        "pytorch-lightning_version",
    }
    assert "optimizer_states" not in state and "mtcsnn_spec" in state
    # what eval and predict need still loads and gives the run's own test numbers
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == str(best)
    assert load_checkpoint(best).epoch + 1 == metrics["best_epoch_number"]  # Lightning's from 0


def test_keep_training_state_keeps_last_and_optimizer_state(tiny_cfg, tmp_path):
    train(tiny_cfg("callbacks.last_checkpoint.every_n_epochs=1", "keep_training_state=true"))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt" and len(names) == 2
    for path in (tmp_path / "checkpoints").iterdir():
        assert "optimizer_states" in torch.load(path, weights_only=True)


def test_a_run_chosen_on_val_loss_keeps_its_lowest_val_loss_epoch(tiny_cfg, tmp_path):
    train(tiny_cfg("optimized_metric=val/loss", "trainer.max_epochs=4", "seed=3"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    with open(tmp_path / "csv" / "metrics.csv") as f:
        logged = {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(f) if r["val/loss"]}
    assert len(logged) == 4 and len(set(logged.values())) > 1
    lowest = min(logged, key=logged.get)
    assert metrics["best_epoch_number"] == lowest + 1  # metrics.csv counts from 0
    assert metrics["val"]["loss"] == pytest.approx(logged[lowest], abs=1e-6)

"""K-fold cross-validation: folds over the pooled train+val images, test untouched, and the
report's out-of-fold and fold-ensemble figures against a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REAL_NPZ
from helpers.cli import run_module, run_train
from helpers.photos import photo_folder
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from sklearn.metrics import roc_auc_score

from mtcsnn.data import FundusFolderDataModule, RetinaMNISTDataModule, SyntheticDataModule
from mtcsnn.data.folds import check_folds, fold_split
from mtcsnn.errors import ConfigError, DataError
from mtcsnn.run.config import CONFIG_PATH

GRADES = np.repeat(np.arange(5), [50, 20, 30, 10, 7])  # 117 images, grade 4 rarer than folds*2


@pytest.mark.parametrize("folds", [2, 5, 10])
def test_the_folds_are_disjoint_cover_the_pool_and_keep_each_grades_share(folds):
    vals = []
    for fold in range(folds):
        train, val = fold_split(GRADES, folds, fold, seed=3)
        assert not set(train) & set(val)
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(GRADES)))
        for grade in range(5):  # each grade spread over the folds as evenly as it goes
            count = (GRADES == grade).sum()
            assert abs((GRADES[val] == grade).sum() - count / folds) < 1
        vals.append(val)
    every = np.concatenate(vals)
    assert np.array_equal(np.sort(every), np.arange(len(GRADES)))  # each image val once


def test_the_fold_seed_draws_the_folds_and_the_same_seed_gives_the_same_folds():
    first = fold_split(GRADES, 5, 2, seed=0)
    again = fold_split(GRADES, 5, 2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], fold_split(GRADES, 5, 2, seed=1)[1])


@pytest.mark.parametrize(
    ("folds", "fold", "says"),
    [(1, 0, "folds=1"), (True, 0, "folds=True"), (2.5, 0, "folds=2.5"), (5, 5, "fold=5"),
     (5, -1, "fold=-1"), (5, None, "fold=None")],
)  # fmt: skip
def test_folds_and_fold_out_of_range_are_one_config_error(folds, fold, says):
    with pytest.raises(ConfigError, match=says):
        check_folds(folds, fold)
    with pytest.raises(ConfigError, match=says):
        SyntheticDataModule(folds=folds, fold=fold)


def test_a_pool_smaller_than_the_folds_is_a_data_error():
    with pytest.raises(DataError, match="fewer than the 5 folds"):
        fold_split(np.array([0, 1, 2]), 5, 0, seed=0)


def _module(folds: int | None, fold: int = 0) -> SyntheticDataModule:
    data = SyntheticDataModule(
        num_train=40, num_val=20, num_test=20, batch_size=16, folds=folds, fold=fold, fold_seed=7
    )
    data.setup()
    return data


def test_a_fold_of_the_synthetic_data_is_val_and_test_stays_as_it_was():
    official = _module(None)
    pool_images = torch.cat([official.splits["train"][0], official.splits["val"][0]])
    pool_grades = torch.cat([official.splits["train"][1], official.splits["val"][1]])
    seen = []
    for fold in range(4):
        data = _module(4, fold)
        train_ids, val_ids = data.ids["train"], data.ids["val"]
        assert not set(train_ids.tolist()) & set(val_ids.tolist())
        assert len(train_ids) + len(val_ids) == 60
        # the ids name the images of the pool: train first, then the official val
        assert torch.equal(data.splits["val"][0], pool_images[val_ids])
        assert torch.equal(data.splits["val"][1], pool_grades[val_ids])
        assert torch.equal(data.splits["train"][0], pool_images[train_ids])
        for split in ("images", "grades"):
            position = 0 if split == "images" else 1
            assert torch.equal(data.splits["test"][position], official.splits["test"][position])
        # the val loader hands the ids on as each image's index (predictions files' column)
        batch = next(iter(data.val_dataloader()))
        assert torch.equal(batch["index"], val_ids[: len(batch["index"])])
        seen.append(val_ids)
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(60))
    assert torch.equal(official.ids["val"], torch.arange(20))  # the official split: positions


@pytest.mark.skipif(not REAL_NPZ.exists(), reason="needs retinamnist.npz")
def test_retinamnist_folds_pool_its_1200_train_and_val_images_and_never_touch_test():
    root = str(REAL_NPZ.parent)
    official = RetinaMNISTDataModule(root, download=False)
    official.setup()
    folded = RetinaMNISTDataModule(root, download=False, folds=5, fold=3)
    folded.setup()
    assert len(folded.ids["train"]) == 960 and len(folded.ids["val"]) == 240
    assert torch.equal(folded.splits["test"][0], official.splits["test"][0])
    pool = torch.cat([official.splits["train"][1], official.splits["val"][1]])
    assert torch.equal(folded.splits["val"][1], pool[folded.ids["val"]])


def test_a_photograph_folders_train_and_val_rows_are_pooled_the_same_way(tmp_path):
    rows = photo_folder(tmp_path, count=50)
    # the CSV's own split column: 30 train, 10 val, 10 test
    splits = ["train"] * 30 + ["val"] * 10 + ["test"] * 10
    lines = ["path,grade,split"] + [f"{p},{g},{s}" for (p, g), s in zip(rows, splits, strict=True)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    labels = str(tmp_path / "labels.csv")
    official = FundusFolderDataModule(labels, size=32)
    official.setup()
    pool = torch.cat([official.splits["train"][1], official.splits["val"][1]])
    seen = []
    for fold in range(2):
        folded = FundusFolderDataModule(labels, size=32, folds=2, fold=fold)
        folded.setup()
        assert torch.equal(folded.splits["val"][1], pool[folded.ids["val"]])
        assert torch.equal(folded.splits["test"][0], official.splits["test"][0])
        seen.append(folded.ids["val"])
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(40))
    refit = FundusFolderDataModule(labels, size=32, folds=2, fold="all")  # a refit: all train
    refit.setup()
    assert torch.equal(refit.splits["train"][1], pool)
    assert torch.equal(refit.splits["test"][0], official.splits["test"][0])


def test_experiment_cv_sweeps_the_five_folds_and_composes_with_other_sweeps():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cv"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.data.folds == 5
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params["data.fold"] == "range(0,5)"


def _oof_by_hand(sweep) -> dict:
    """Per (loss, seed): out-of-fold grades/probabilities and the fold ensemble, computed from
    the runs' own files with pandas-free NumPy, independently of the report."""
    found: dict = {}
    for metrics_path in sweep.glob("*/metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        folder = metrics_path.parent
        key = (metrics["choices"]["loss"], metrics["seed"])
        epoch = metrics["best_epoch_number"] - 1
        rows = np.genfromtxt(folder / "val_predictions.csv", delimiter=",", names=True)
        chosen = rows[rows["epoch"] == epoch]
        test = np.genfromtxt(folder / "test_predictions.csv", delimiter=",", names=True)
        entry = found.setdefault(key, {"val": [], "test": []})
        entry["val"].append(chosen)
        entry["test"].append(test)
    return found


def _probs(rows) -> np.ndarray:
    return np.stack([rows[f"prob_{c}"] for c in range(5)], axis=1)


@pytest.mark.slow
def test_the_report_puts_each_seeds_folds_together_out_of_fold_and_as_an_ensemble(tmp_path):
    sweep = tmp_path / "cv"
    result = run_train(
        "--multirun",
        "experiment=cv",
        "data=synthetic",
        "data.num_train=40",
        "data.num_val=20",
        "data.num_test=20",
        "data.batch_size=16",
        "data.folds=3",
        "data.fold=range(0,3)",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "logger=csv",
        "loss=ce,mtcsnn",
        "seed=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = run_module("mtcsnn.report", str(sweep), "--bootstrap=50")
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((sweep / "summary.json").read_text())
    rows = {r["configuration"]: r for r in summary["cross_validation"]["configurations"]}
    assert set(rows) == {"loss=ce", "loss=mtcsnn"}
    configurations = {c["configuration"]: c for c in summary["configurations"]}
    by_hand = _oof_by_hand(sweep)
    for loss in ("ce", "mtcsnn"):
        row = rows[f"loss={loss}"]
        assert row["folds"] == 3 and row["seeds"] == 1
        assert len(row["chosen_epochs"]) == 3 and set(row["chosen_epochs"]) <= {1, 2}
        val = np.concatenate(by_hand[loss, 1]["val"])
        order = np.argsort(val["index"])
        assert np.array_equal(val["index"][order], np.arange(60))  # every pooled image once
        grades, probs = val["grade"][order].astype(int), _probs(val)[order]
        auroc = roc_auc_score(grades, probs, multi_class="ovr", labels=range(5))
        assert row["out_of_fold"]["auroc"] == pytest.approx(auroc, abs=1e-6)
        assert row["out_of_fold"]["acc"] == pytest.approx(np.mean(probs.argmax(1) == grades))
        tests = by_hand[loss, 1]["test"]
        averaged = np.mean([_probs(t[np.argsort(t["index"])]) for t in tests], axis=0)
        test_grades = tests[0]["grade"][np.argsort(tests[0]["index"])].astype(int)
        expected = roc_auc_score(test_grades, averaged, multi_class="ovr", labels=range(5))
        assert row["fold_ensemble_test"]["auroc"] == pytest.approx(expected, abs=1e-5)
        # referable DR (grade >= 2): the threshold the target sensitivity chooses on the
        # pooled images, applied to the fold ensemble
        p, referable = probs[:, 2:].sum(1), grades >= 2
        threshold = max(t for t in p if np.mean(p[referable] >= t) >= 0.87 - 1e-12)
        screened = configurations[f"loss={loss}"]["test"]["referable"]
        assert screened["threshold"]["mean"] == pytest.approx(threshold, abs=1e-9)
        p_test, referable_test = averaged[:, 2:].sum(1), test_grades >= 2
        sensitivity = np.mean(p_test[referable_test] >= threshold)
        assert screened["sensitivity"]["mean"] == pytest.approx(sensitivity)
    (compared,) = summary["cross_validation"]["out_of_fold_vs_ce"]
    assert compared["configuration"] == "loss=mtcsnn" and compared["baseline"] == "loss=ce"
    page = (sweep / "results.md").read_text()
    assert "## Cross-validation" in page and "out-of-fold AUROC" in page

    # a fold missing: that seed's set is left out, with why, and nothing else is made of it
    for folder in sweep.glob("*/metrics.json"):
        metrics = json.loads(folder.read_text())
        if metrics["choices"]["loss"] == "ce" and metrics["config"]["data"]["fold"] == 1:
            folder.unlink()
    again = run_module("mtcsnn.report", str(sweep), "--bootstrap=50")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has 2 of 3 folds (missing 1)" in again.stderr
    summary = json.loads((sweep / "summary.json").read_text())
    (only,) = summary["cross_validation"]["configurations"]  # the MTCSNN set alone
    assert only["out_of_fold"] == rows["loss=mtcsnn"]["out_of_fold"]
    assert summary["cross_validation"]["out_of_fold_vs_ce"] == []


def _noisy_probs(grades: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    logits = np.eye(5)[grades] * 2.0 + rng.normal(0.0, noise, (len(grades), 5))
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def test_the_cv_choice_is_compared_with_what_it_passed_over_out_of_fold_and_on_test():
    from pathlib import Path

    from mtcsnn.grading.comparison import grade_figures
    from mtcsnn.reporting.comparing import chosen_against_the_rest, chosen_on_val
    from mtcsnn.reporting.cross_validation import FoldSet, add_oof_differences
    from mtcsnn.reporting.grouping import group_runs, label
    from mtcsnn.reporting.page import chosen_on_val_lines

    rng = np.random.default_rng(0)
    pool, test = np.arange(300) % 5, np.arange(200) % 5
    # "adamw" is the better out of fold and the worse on test: chosen on the first alone
    noise = {"adam": (2.5, 1.5), "adamw": (1.5, 2.5)}
    sets, figures = [], {}
    for optimizer, (oof_noise, test_noise) in noise.items():
        for seed in (1, 2, 3):
            oof_probs = _noisy_probs(pool, oof_noise, rng)
            test_probs = _noisy_probs(test, test_noise, rng)
            metrics = {
                "seed": seed,
                "val": grade_figures(pool, oof_probs),
                "test": grade_figures(test, test_probs),
            }
            settings = {"choices.loss": "ce", "choices.model/optimizer": optimizer}
            sets.append(
                FoldSet(
                    path=Path(f"{optimizer}/{seed}"),
                    metrics=metrics,
                    grades=test,
                    probs=test_probs,
                    settings=settings,
                    oof_grades=pool,
                    oof_probs=oof_probs,
                )
            )
            figures[optimizer, seed] = (
                roc_auc_score(pool, oof_probs, multi_class="ovr"),
                roc_auc_score(test, test_probs, multi_class="ovr"),
            )
    groups = group_runs(sets)
    rankings = chosen_on_val(groups)
    (ranking,) = rankings
    assert [label(c) for c in ranking["ranked"]] == [
        "model/optimizer=adamw",
        "model/optimizer=adam",
    ]
    rows = chosen_against_the_rest(groups, rankings, 200)
    (row,) = rows
    assert label(row["config"]) == "model/optimizer=adamw"
    assert label(row["baseline"]) == "model/optimizer=adam"
    assert row["seeds"] == 3
    on_test = np.mean([figures["adamw", s][1] - figures["adam", s][1] for s in (1, 2, 3)])
    assert row["auroc"][0] == pytest.approx(on_test) and on_test < 0
    assert row["auroc"][1] <= on_test <= row["auroc"][2]
    add_oof_differences(rows, groups, 200)
    out_of_fold = np.mean([figures["adamw", s][0] - figures["adam", s][0] for s in (1, 2, 3)])
    assert row["out_of_fold"]["auroc"][0] == pytest.approx(out_of_fold) and out_of_fold > 0
    assert row["out_of_fold"]["auroc"][1] <= out_of_fold <= row["out_of_fold"]["auroc"][2]
    (line,) = [
        line
        for line in chosen_on_val_lines(groups, rankings, [], rows)
        if line.startswith("| model/optimizer=adamw | model/optimizer=adam | 3 |")
    ]
    assert f"{on_test:+.4f}" in line and f"{out_of_fold:+.4f}" in line
    ranked = [
        line
        for line in chosen_on_val_lines(groups, rankings, [], rows)
        if line.startswith("| ce |")
    ]
    assert len(ranked) == 2 and all("| out-of-fold AUROC |" in line for line in ranked)

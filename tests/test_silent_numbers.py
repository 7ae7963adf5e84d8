"""Never a silent wrong number: AUROC over the grades present, splits too small to score,
photographs listed twice, and model outputs that are NaN or infinite."""

from __future__ import annotations

import csv
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY
from helpers.cli import run_module
from PIL import Image
from sklearn.metrics import roc_auc_score

from mtcsnn.data.datamodule import PairDataModule
from mtcsnn.data.fundus_folder import FundusFolderDataModule
from mtcsnn.data.synthetic import make_synthetic
from mtcsnn.errors import DataError, MTCSNNError
from mtcsnn.grading.comparison import grade_scores, ovr_auroc
from mtcsnn.grading.metrics import grade_metrics, warn_absent_grades
from mtcsnn.grading.selection import epoch_values
from mtcsnn.inference import batch
from mtcsnn.run.checkpoint import load_checkpoint

# ---------------------------------------------------------------- AUROC over the grades present


def predictions_without(absent: tuple[int, ...], n: int = 120, seed: int = 0):
    """Informative class probabilities (n x 5) of grades drawn from those not ``absent``."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(5) if c not in absent]
    grades = rng.choice(present, size=n)
    logits = rng.normal(size=(n, 5)) + 1.2 * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return grades, probs.astype(np.float32)


def sklearn_present_mean(grades: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's one-vs-rest AUROC of each grade present, averaged."""
    return float(np.mean([roc_auc_score(grades == c, probs[:, c]) for c in np.unique(grades)]))


def torchmetrics_values(grades: np.ndarray, probs: np.ndarray):
    metrics, half = grade_metrics(5), len(grades) // 2
    metrics.update(torch.from_numpy(probs[:half]), torch.from_numpy(grades[:half]))  # 2 batches
    metrics.update(torch.from_numpy(probs[half:]), torch.from_numpy(grades[half:]))
    return metrics, metrics.compute()


@pytest.mark.parametrize(("absent", "seed"), [((4,), 0), ((0,), 1), ((1, 3), 2), ((2,), 3)])
def test_auroc_with_a_grade_absent_is_the_mean_over_the_grades_present(absent, seed):
    grades, probs = predictions_without(absent, seed=seed)
    expected = sklearn_present_mean(grades, probs)
    _, values = torchmetrics_values(grades, probs)
    assert values["auroc"].item() == pytest.approx(expected, abs=1e-5)
    assert grade_scores(grades, probs)["auroc"] == pytest.approx(expected, abs=1e-9)
    assert ovr_auroc(grades[None], probs[None])[0] == pytest.approx(expected, abs=1e-9)
    # the val AUROC that a report's held-out selection scores epochs by
    assert epoch_values(grades, probs[None], "auroc")[0] == pytest.approx(expected, abs=1e-9)


def test_four_uninformative_grades_score_one_half_not_two_fifths():
    grades = np.repeat(np.arange(4), 10)  # grade 4 absent
    probs = np.full((40, 5), 0.2, dtype=np.float32)  # every image alike: AUROC 0.5 per grade
    _, values = torchmetrics_values(grades, probs)
    assert values["auroc"].item() == pytest.approx(0.5)
    assert grade_scores(grades, probs)["auroc"] == pytest.approx(0.5)


def test_the_absent_grades_are_named_in_one_warning_not_every_epoch(caplog):
    grades, probs = predictions_without((4,))
    metrics = grade_metrics(5)
    with warnings.catch_warnings(record=True) as library_warnings:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING):
            for _ in range(3):  # three epochs on the same val images
                metrics.update(torch.from_numpy(probs), torch.from_numpy(grades))
                metrics.compute()
                warn_absent_grades(metrics, "val")
                metrics.reset()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "val" in lines[0] and "grade 4" in lines[0] and "0, 1, 2, 3" in lines[0]
    assert not [w for w in library_warnings if "samples in targets" in str(w.message)]


def test_a_split_of_one_grade_has_no_auroc_not_zero(caplog):
    grades = np.full(30, 2)
    probs = np.random.default_rng(0).dirichlet(np.ones(5), 30).astype(np.float32)
    metrics, values = torchmetrics_values(grades, probs)
    assert np.isnan(values["auroc"].item())
    assert np.isnan(grade_scores(grades, probs)["auroc"])
    assert np.isnan(ovr_auroc(grades[None], probs[None])[0])
    with caplog.at_level(logging.WARNING):
        warn_absent_grades(metrics, "test")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "test" in line and "grade 2 only" in line and "undefined" in line


def test_a_resample_lacking_a_grade_is_scored_on_the_grades_it_has():
    grades, probs = predictions_without(())
    rows = np.stack([grades, np.where(grades == 3, 0, grades)])  # row 2: no grade 3
    scores = ovr_auroc(rows, np.stack([probs, probs]))
    assert scores[1] == pytest.approx(sklearn_present_mean(rows[1], probs))


class MissingGradeData(PairDataModule):
    """Synthetic images whose val split has no image of grade 4."""

    def load_split(self, split):
        images, grades = make_synthetic(60, seed={"train": 0, "val": 1, "test": 2}[split])
        if split == "val":
            keep = grades != 4
            images, grades = images[keep], grades[keep]
        return images, grades


def test_a_run_logs_the_present_grades_mean_and_warns_once(tiny_checkpoint, caplog):
    module = load_checkpoint(tiny_checkpoint).module
    data = MissingGradeData(batch_size=8, eval_batch_size=16)  # several val batches
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with caplog.at_level(logging.WARNING):
        first = trainer.validate(module, datamodule=data, verbose=False)[0]
        trainer.validate(module, datamodule=data, verbose=False)
    images, grades = data.splits["val"]
    with torch.no_grad():
        probs = module.probabilities(module.net(images.float() / 255)).numpy()
    assert first["val/auroc"] == pytest.approx(sklearn_present_mean(grades.numpy(), probs), 1e-5)
    lines = [r.getMessage() for r in caplog.records if "grade 4" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "samples in targets" not in caplog.text


# ------------------------------------------------------- photographs: too few, or listed twice


def photograph(path: Path, seed: int) -> None:
    """A small fundus-like photograph, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:64]
    disc = (xx - 32) ** 2 + (yy - 24) ** 2 < 22**2
    image = rng.integers(0, 8, (48, 64, 3), dtype=np.uint8)
    image[disc] = (120 + seed % 100, 60, 30)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def labels_csv(root: Path, rows: list[tuple], header=("path", "grade")) -> Path:
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return root / "labels.csv"


def folder_of(root: Path, count: int) -> list[tuple[str, int]]:
    rows = []
    for i in range(count):
        photograph(root / "photos" / f"eye_{i:02d}.png", seed=i)
        rows.append((f"photos/eye_{i:02d}.png", i % 5))
    return rows


def test_ten_photographs_split_automatically_are_one_error_saying_what_to_do(tmp_path):
    labels = labels_csv(tmp_path, folder_of(tmp_path, 10))  # val: 1 image, test: 2
    data = FundusFolderDataModule(str(labels), size=16, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as caught:
        data.setup()
    message = str(caught.value)
    assert "\n" not in message
    assert "the val split holds 1 image" in message and "choose a checkpoint" in message
    assert "split column" in message and "add photographs" in message.lower()
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing cached for a run that fails


def test_a_split_column_with_a_test_split_of_one_grade_is_refused(tmp_path):
    rows = folder_of(tmp_path, 20)
    split = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    # the test photographs all of grade 0
    rows = [(p, 0 if s == "test" else g, s) for (p, g), s in zip(rows, split, strict=True)]
    labels = labels_csv(tmp_path, rows, header=("path", "grade", "split"))
    data = FundusFolderDataModule(str(labels), size=16, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="test split holds 4 images, all of grade 0.*split column"):
        data.setup()


def test_a_synthetic_val_split_of_one_image_is_refused():
    from mtcsnn.data.synthetic import SyntheticDataModule

    with pytest.raises(DataError, match="val split holds 1 image"):
        SyntheticDataModule(num_train=20, num_val=1, num_test=20).setup()


@pytest.mark.parametrize(
    ("second", "copy"),
    [
        ("photos/eye_03.png", False),  # the same path again
        ("./photos/eye_03.png", False),  # written otherwise
        ("photos/../photos/eye_03.png", False),
        ("photos/copy_of_3.png", True),  # the same bytes under another name
    ],
)
def test_a_photograph_listed_twice_is_one_error_naming_its_lines(tmp_path, second, copy):
    rows = folder_of(tmp_path, 25)
    if copy:
        shutil.copy(tmp_path / "photos" / "eye_03.png", tmp_path / second)
    rows.append((second, 1))  # another grade than eye_03's (3): refused whatever the grades
    labels = labels_csv(tmp_path, rows)
    data = FundusFolderDataModule(str(labels), size=16, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as caught:
        data.setup()
    message = str(caught.value)
    assert "lines 5, 27" in message and "eye_03.png" in message and second in message
    assert "more than once" in message
    assert not list((tmp_path / "cache").glob("*.npz"))


# ----------------------------------------------------------------- outputs that are NaN or inf


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with one weight of its first layer set to NaN: every output NaN."""
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if v.is_floating_point() and "conv" in k)
    state["state_dict"][name].view(-1)[0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.ckpt"
    torch.save(state, path)
    return path


def test_predict_lists_images_with_non_finite_outputs_as_failures(nan_checkpoint, tmp_path):
    for i in range(3):
        photograph(tmp_path / "in" / f"{i}.png", seed=i)
    module = load_checkpoint(nan_checkpoint).module
    rows, failures = batch.predict_inputs(
        module, [str(tmp_path / "in")], 28, torch.device("cpu"), progress=False
    )
    assert rows == []
    assert len(failures) == 3
    assert all(
        "non-finite outputs (nan)" in reason and "not graded" in reason for _, reason in failures
    )


def test_only_the_images_with_non_finite_outputs_go_to_failures(
    tiny_checkpoint, tmp_path, monkeypatch
):
    for i in range(4):
        photograph(tmp_path / "in" / f"{i}.png", seed=i)
    real = batch.predict_batch

    def some_not_finite(modules, images, device, temperature=None):
        probs, scores = real(modules, images, device, temperature)
        probs[1, 2] = float("nan")
        scores[3] = float("inf")
        return probs, scores

    monkeypatch.setattr(batch, "predict_batch", some_not_finite)
    module = load_checkpoint(tiny_checkpoint).module
    rows, failures = batch.predict_inputs(
        module, [str(tmp_path / "in")], 28, torch.device("cpu"), progress=False
    )
    assert [r[0] for r in rows] == [str(tmp_path / "in" / f"{i}.png") for i in (0, 2)]
    assert [(Path(n).name, r.split(";")[0]) for n, r in failures] == [
        ("1.png", "the model gave non-finite outputs (nan)"),
        ("3.png", "the model gave non-finite outputs (inf)"),
    ]


def test_eval_and_ensembles_refuse_non_finite_outputs(nan_checkpoint, tiny_checkpoint, tiny_cfg):
    from hydra.utils import instantiate

    from mtcsnn.models.lit_module import NonFiniteOutputError
    from mtcsnn.run.evaluation import ensemble_results, evaluation_results, refuse_non_finite

    cfg = tiny_cfg()
    nan_module = load_checkpoint(nan_checkpoint).module
    with pytest.raises(
        NonFiniteOutputError, match=r"non-finite outputs .* for 20 of 20 val images"
    ):
        evaluation_results(nan_module, instantiate(cfg.data), cfg.trainer)
    good = load_checkpoint(tiny_checkpoint).module
    with pytest.raises(NonFiniteOutputError):
        ensemble_results([good, nan_module], instantiate(cfg.data), cfg.trainer)
    predictions = {"probs": torch.full((3, 5), 0.2), "score": torch.tensor([0.0, float("nan"), 1])}
    with pytest.raises(MTCSNNError, match="1 of 3 test images"):
        refuse_non_finite(predictions, "test")


def test_explain_writes_no_overlay_for_non_finite_outputs(nan_checkpoint, tmp_path):
    from mtcsnn.inference.gradcam import explain_inputs

    photograph(tmp_path / "in" / "a.png", seed=0)
    module = load_checkpoint(nan_checkpoint).module
    result = explain_inputs(
        module, [str(tmp_path / "in")], 28, torch.device("cpu"), tmp_path / "out", progress=False
    )
    assert result.written == [] and not (tmp_path / "out").exists()
    assert "non-finite outputs (nan)" in result.failures[0][1]


@pytest.mark.slow
def test_predict_and_eval_of_a_nan_checkpoint_fail_in_one_line(nan_checkpoint, tmp_path):
    photograph(tmp_path / "in" / "a.png", seed=0)
    predicted = run_module(
        "mtcsnn.predict",
        f"ckpt_path={nan_checkpoint}",
        f"inputs=[{tmp_path / 'in'}]",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert predicted.returncode != 0
    with open(tmp_path / "p" / "failures.csv", newline="") as f:
        (failure,) = list(csv.DictReader(f))
    assert "non-finite outputs (nan)" in failure["reason"]
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []
    evaluated = run_module(
        "mtcsnn.eval", f"ckpt_path={nan_checkpoint}", f"hydra.run.dir={tmp_path / 'e'}", *TINY[:1]
    )
    output = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 1 and "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "non-finite outputs" in line
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_training_stops_when_val_outputs_are_not_finite(tiny_checkpoint, tiny_cfg, tmp_path):
    """Weights that train but give NaN in eval mode (a batch-norm running mean of NaN)."""
    from mtcsnn.models.lit_module import NonFiniteOutputError
    from mtcsnn.run.training import train

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("running_mean"))
    state["state_dict"][name].fill_(float("nan"))
    torch.save(state, tmp_path / "eval_nan.ckpt")
    with pytest.raises(NonFiniteOutputError, match="val images.*at epoch 1; the best checkpoint"):
        train(tiny_cfg(f"init_from={tmp_path / 'eval_nan.ckpt'}"))
    assert not (tmp_path / "metrics.json").exists()

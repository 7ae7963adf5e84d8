"""Fundus photographs: the disc found and kept whole, and a folder of them as a data set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers.cli import run_module, run_train
from helpers.metrics import flat
from helpers.photos import fundus, photo_folder
from PIL import Image

from mtcsnn.data.fundus import disc_box, prepare_image
from mtcsnn.data.fundus_folder import FundusFolderDataModule, stratified_split
from mtcsnn.errors import DataError


def test_a_disc_wider_than_the_frame_keeps_its_edges():
    # as on 3888x2592 camera photographs: the disc is cut at top and bottom, black at the sides
    photo = fundus(390, 260, radius=160)
    assert np.allclose(disc_box(photo), (35, 0, 355, 260), atol=2)
    prepared = np.asarray(prepare_image(Image.fromarray(photo), 64))
    assert prepared.shape == (64, 64, 3)
    bright_columns = np.flatnonzero((prepared.max(axis=2) > 40).any(axis=0))
    assert bright_columns[0] <= 1 and bright_columns[-1] >= 62  # both edges of the disc kept
    assert prepared[:4].max() < 20 and prepared[-4:].max() < 20  # padded, not stretched


def test_the_black_border_around_a_disc_is_cropped_away():
    photo = fundus(400, 300, radius=100)  # a small disc in a wide black frame
    assert np.allclose(disc_box(photo), (100, 50, 300, 250), atol=2)
    prepared = np.asarray(prepare_image(Image.fromarray(photo), 32))
    assert prepared[16, 16].max() > 100 and prepared[16, 0].max() > 40  # disc to the edge


def test_prepared_images_and_dark_images_are_handled():
    ready = fundus(28, 28, radius=30)
    assert np.array_equal(np.asarray(prepare_image(Image.fromarray(ready), 28)), ready)
    dark = np.zeros((50, 80, 3), dtype=np.uint8)
    assert disc_box(dark) is None
    assert np.asarray(prepare_image(Image.fromarray(dark), 28)).shape == (28, 28, 3)


def test_the_stratified_split_keeps_each_grades_share_and_its_seed():
    grades = np.repeat(np.arange(5), [50, 20, 30, 10, 10])
    split = stratified_split(grades, 0.1, 0.2, seed=3)
    assert (split == "test").sum() == 24 and (split == "val").sum() == 12
    for grade, count in zip(range(5), [50, 20, 30, 10, 10], strict=True):
        chosen = split[grades == grade]
        assert abs((chosen == "test").sum() - 0.2 * count) <= 1
        assert abs((chosen == "val").sum() - 0.1 * count) <= 1
    small = stratified_split(np.arange(10) % 5, 0.1, 0.2, seed=0)  # 2 images a grade
    assert (small == "val").sum() == 1 and (small == "test").sum() == 2
    assert np.array_equal(split, stratified_split(grades, 0.1, 0.2, seed=3))
    assert not np.array_equal(split, stratified_split(grades, 0.1, 0.2, seed=4))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("photos/eye_00.png,7", "line 3: grade '7' is not a grade 0-4"),
        ("photos/eye_00.png,two", "line 3: grade 'two' is not a grade 0-4"),
        ("photos/missing.png,1", "line 3: cannot read photos/missing.png"),
        ("photos/notes.png,1", "line 3: cannot read photos/notes.png (UnidentifiedImageError"),
    ],
)
def test_a_bad_row_is_one_error_naming_it(tmp_path, line, message):
    photo_folder(tmp_path, count=1)
    (tmp_path / "photos" / "notes.png").write_text("not a picture")
    with open(tmp_path / "labels.csv", "a") as f:
        f.write(line + "\n")
    data = FundusFolderDataModule(str(tmp_path / "labels.csv"), size=32, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        data.prepare_data()


def test_the_splits_are_written_and_the_cache_is_reused(tmp_path):
    rows = photo_folder(tmp_path)
    first = FundusFolderDataModule(str(tmp_path / "labels.csv"), size=32)
    first.setup()
    (cache,) = (tmp_path / ".mtcsnn_cache").glob("*.npz")
    with open(cache.with_suffix(".splits.csv"), newline="") as f:
        written = list(csv.DictReader(f))
    assert [(r["path"], int(r["grade"])) for r in written] == rows
    assert sum(len(first.splits[s][0]) for s in ("train", "val", "test")) == len(rows)
    # a second module reads the cache: the photographs are not opened again
    for name, _ in rows:
        (tmp_path / name).chmod(0)
    try:
        second = FundusFolderDataModule(str(tmp_path / "labels.csv"), size=32)
        second.setup()
    finally:
        for name, _ in rows:
            (tmp_path / name).chmod(0o644)
    assert all(
        np.array_equal(first.splits[s][0].numpy(), second.splits[s][0].numpy())
        for s in ("train", "val", "test")
    )
    # a photograph changed: the cache no longer matches and is made again
    Image.fromarray(fundus(96, 64, radius=40, level=250)).save(tmp_path / rows[0][0])
    FundusFolderDataModule(str(tmp_path / "labels.csv"), size=32).setup()
    assert len(list((tmp_path / ".mtcsnn_cache").glob("*.npz"))) == 2


@pytest.mark.slow
def test_train_eval_and_predict_on_a_folder_of_photographs(tmp_path):
    photo_folder(tmp_path / "data")
    labels = tmp_path / "data" / "labels.csv"
    common = ["data=fundus_folder", f"data.labels={labels}", "data.size=64", "data.batch_size=16"]
    # a split drawn with another seed than eval's default: eval must split as training did
    common.append("data.split_seed=3")
    first = run_train(*common, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "prepared 40 photographs" in first.stdout + first.stderr
    second = run_train(*common, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run2'}")
    assert second.returncode == 0, second.stderr[-3000:]
    # the cache, not the photographs
    assert "read 40 prepared photographs" in second.stdout + second.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["data"]["size"] == 64 and 0 <= metrics["test"]["auroc"] <= 1
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt")
    evaluated = run_module(
        "mtcsnn.eval",
        f"ckpt_path={ckpt}",
        "data=fundus_folder",  # a folder-trained model is evaluated on photographs named here
        f"data.labels={labels}",
        f"hydra.run.dir={tmp_path / 'e'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert flat(again["test"]) == pytest.approx(flat(metrics["test"]))
    assert again["config"]["data"]["split_seed"] == 3
    assert (tmp_path / "e" / "test_predictions.csv").read_text() == (
        tmp_path / "run" / "test_predictions.csv"
    ).read_text()
    predicted = run_module(
        "mtcsnn.predict",
        f"ckpt_path={ckpt}",
        f"inputs=[{tmp_path / 'data' / 'photos'}]",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with open(tmp_path / "p" / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 40


def test_a_public_data_sets_own_label_file_is_read_as_it_comes(tmp_path):
    """APTOS 2019's layout: train.csv (id_code,diagnosis) and train_images/<id_code>.png."""
    (tmp_path / "train_images").mkdir()
    lines = ["id_code,diagnosis"]
    for i in range(20):  # 10 would leave val one photograph, too few to score
        Image.fromarray(fundus(90, 60, radius=35, seed=i)).save(tmp_path / f"train_images/a{i}.png")
        lines.append(f"a{i},{i % 5}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    data = FundusFolderDataModule(
        str(tmp_path / "train.csv"),
        size=32,
        path_column="id_code",
        grade_column="diagnosis",
        path_prefix="train_images/",
        path_suffix=".png",
    )
    data.setup()
    assert sum(len(data.splits[s][1]) for s in ("train", "val", "test")) == 20
    with pytest.raises(DataError, match="must name the columns path,grade"):
        FundusFolderDataModule(str(tmp_path / "train.csv"), size=32).prepare_data()

"""A checkpoint from a stranger is weights plus a model spec; nothing else in it steers the tools.

The model is rebuilt from the spec alone (checked and bounded); the data eval reads come from
the command line; the run record saved beside (``mtcsnn_config``) is never built or resolved.
Each hostile checkpoint here is written by the test with ``torch.save`` of a dict.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SYNTHETIC, compose_command, compose_train
from helpers.cli import run_module
from helpers.metrics import flat
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import ConfigError, MTCSNNError
from mtcsnn.losses import CoralLoss, CornLoss, GradeRegressionLoss
from mtcsnn.models import MTCSNNModule, SiameseResNet
from mtcsnn.models.build import build_from_spec
from mtcsnn.models.spec import SpecError, parse_spec
from mtcsnn.run.checkpoint import (
    CheckpointError,
    build_module,
    load_checkpoint,
    load_checkpoints,
)
from mtcsnn.run.checks import check_config
from mtcsnn.run.config_spec import spec_of_config

SECRET = "s3cr3t-value-from-the-environment"


# ---------------------------------------------------------------- helpers


def state_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def write(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def with_spec(source: Path, out: Path, **changes: object) -> Path:
    """``source`` with its spec changed (``head={...}``, ``image_size=...``)."""
    state = state_of(source)
    spec = copy.deepcopy(state["mtcsnn_spec"])
    spec.update(changes)
    state["mtcsnn_spec"] = spec
    return write(state, out)


def folder_trained(source: Path, out: Path, labels: str | None = "clinic_labels.csv") -> Path:
    """``source``'s weights, said by its spec to be trained on a folder of photographs."""
    return with_spec(
        source,
        out,
        preparation={"name": "fundus_disc_square", "version": 1},
        trained_on={"data": "fundus_folder", "labels": labels},
    )


def compose_eval(overrides: list[str], output_dir: Path) -> DictConfig:
    """The real eval config with ``overrides``, as ``python -m mtcsnn.eval`` would see it."""
    return compose_command("eval", overrides, output_dir)


def evaluate(ckpt: Path, out: Path, *overrides: str) -> dict:
    from mtcsnn.eval import evaluate as run_eval

    try:
        return run_eval(compose_eval([f"ckpt_path={ckpt}", *overrides], out))
    finally:
        GlobalHydra.instance().clear()


SYNTHETIC = ["data=synthetic", *TINY_SYNTHETIC, "trainer=cpu"]


def hostile_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A labels CSV (and a photograph) outside anything the user names, and a cache folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 30, 20)).save(elsewhere / "a.png")
    (elsewhere / "labels.csv").write_text("path,grade\na.png,0\n")
    return elsewhere / "labels.csv", tmp_path / "planted_cache"


# ---------------------------------------------------------------- the spec itself


def test_training_writes_a_spec_that_survives_the_weights_only_rewrite(tiny_checkpoint):
    state = state_of(tiny_checkpoint)
    spec = parse_spec(state["mtcsnn_spec"])
    assert spec.image_size == 28 and spec.grades == 5 and spec.trained_on == "synthetic"
    assert spec.head.kind == "mtcsnn" and spec.head.get("lam") == 0.5
    assert "mtcsnn_config" in state  # the run record stays, as data
    assert parse_spec(spec.to_dict()) == spec


def good_spec(tiny_checkpoint) -> dict:
    return copy.deepcopy(state_of(tiny_checkpoint)["mtcsnn_spec"])


BAD_SPECS = {
    "unknown top key": ({"extra": 1}, "unknown key"),
    "unknown head key": ({"head": {"kind": "ce", "label_smoothing": None, "x": 1}}, "head.'x'"),
    "unknown version": ({"version": 2}, "version"),
    "version as text": ({"version": "1"}, "version"),
    "other format": ({"format": "pickle"}, "format"),
    "huge image": ({"image_size": 100000}, "image_size"),
    "tiny image": ({"image_size": 2}, "image_size"),
    "size as text": ({"image_size": "28"}, "image_size"),
    "size as float": ({"image_size": 28.0}, "image_size"),
    "seven grades": ({"grades": 7}, "grades"),
    "grades as bool": ({"grades": True}, "grades"),
    "unknown backbone": ({"backbone": "resnet1000"}, "backbone"),
    "unknown stem": ({"stem": "os.system"}, "stem"),
    "unknown head": ({"head": {"kind": "mtcsnn.losses.Evil"}}, "head.kind"),
    "nan lam": (
        {
            "head": {
                "kind": "mtcsnn",
                "lam": math.nan,
                "difference": "signed",
                "label_smoothing": None,
            }
        },
        "head.lam",
    ),
    "huge lam": (
        {"head": {"kind": "mtcsnn", "lam": 1e300, "difference": "signed", "label_smoothing": None}},
        "head.lam",
    ),
    "missing head constant": ({"head": {"kind": "mtcsnn", "lam": 0.5}}, "missing"),
    "zero width": ({"head": {"kind": "regression", "width": 0}}, "head.width"),
    "inf width": ({"head": {"kind": "regression", "width": math.inf}}, "head.width"),
    "dropout 1": ({"dropout": 1.0}, "dropout"),
    "nan dropout": ({"dropout": math.nan}, "dropout"),
    "std zero": ({"normalisation": {"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}}, "std"),
    "std inf": ({"normalisation": {"mean": [0.5] * 3, "std": [0.5, math.inf, 0.5]}}, "std"),
    "two means": ({"normalisation": {"mean": [0.5] * 2, "std": [0.5] * 3}}, "mean"),
    "mean as text": ({"normalisation": {"mean": "${oc.env:HOME}", "std": [0.5] * 3}}, "mean"),
    "unknown preparation": ({"preparation": {"name": "crop", "version": 1}}, "preparation"),
    "future preparation": ({"preparation": {"name": "synthetic", "version": 9}}, "preparation"),
    "unknown data": ({"trained_on": {"data": "os", "labels": None}}, "trained_on.data"),
    "data and preparation disagree": (
        {"trained_on": {"data": "fundus_folder", "labels": None}},
        "preparation",
    ),
    "labels with a newline": (
        {"trained_on": {"data": "synthetic", "labels": "a\nerror: fake"}},
        "trained_on.labels",
    ),
    "labels with an interpolation": (
        {"trained_on": {"data": "synthetic", "labels": "${oc.env:HOME}"}},
        "trained_on.labels",
    ),
    "split fractions too large": (
        {
            "trained_on": {
                "data": "synthetic",
                "labels": None,
                "split": {"val_fraction": 0.6, "test_fraction": 0.5, "seed": 0},
            }
        },
        "trained_on.split",
    ),
    "negative split seed": (
        {
            "trained_on": {
                "data": "synthetic",
                "labels": None,
                "split": {"val_fraction": 0.1, "test_fraction": 0.2, "seed": -1},
            }
        },
        "trained_on.split.seed",
    ),
    "split with a path": (
        {
            "trained_on": {
                "data": "synthetic",
                "labels": None,
                "split": {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0, "file": "/x"},
            }
        },
        "trained_on.split",
    ),
    "fold beyond the folds": (
        {
            "trained_on": {
                "data": "synthetic",
                "labels": None,
                "folds": {"folds": 5, "fold": 5, "seed": 0},
            }
        },
        "trained_on.folds.fold",
    ),
    "fold as a word": (
        {
            "trained_on": {
                "data": "synthetic",
                "labels": None,
                "folds": {"folds": 5, "fold": "${oc.env:HOME}", "seed": 0},
            }
        },
        "trained_on.folds.fold",
    ),
    "one fold": (
        {"trained_on": {"data": "synthetic", "labels": None, "folds": {"folds": 1, "fold": 0}}},
        "trained_on.folds",
    ),
    "not a mapping": (None, "mapping"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_spec_out_of_bounds_is_one_clear_error(tiny_checkpoint, case):
    changes, named = BAD_SPECS[case]
    raw = good_spec(tiny_checkpoint) if changes is not None else ["not", "a", "mapping"]
    if changes is not None:
        raw.update(changes)
    with pytest.raises(SpecError, match="model spec") as err:
        parse_spec(raw)
    message = str(err.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize(
    "case", ["huge image", "seven grades", "unknown version", "unknown top key"]
)
def test_a_checkpoint_with_such_a_spec_is_refused_by_every_tool(tiny_checkpoint, tmp_path, case):
    changes, named = BAD_SPECS[case]
    crafted = with_spec(tiny_checkpoint, tmp_path / "crafted.ckpt", **changes)
    with pytest.raises(CheckpointError, match="refused to rebuild the model") as err:
        load_checkpoint(crafted)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_weights_whose_normalisation_is_not_the_specs_are_refused(tiny_checkpoint, tmp_path):
    state = state_of(tiny_checkpoint)
    state["state_dict"]["net.std"] = torch.zeros_like(state["state_dict"]["net.std"])
    with pytest.raises(CheckpointError, match="normalisation std"):
        load_checkpoint(write(state, tmp_path / "zero_std.ckpt"))


def test_an_epoch_that_is_no_number_is_not_a_traceback(tiny_checkpoint, tmp_path):
    state = state_of(tiny_checkpoint)
    state["epoch"] = "${oc.env:HOME}"
    assert load_checkpoint(write(state, tmp_path / "odd_epoch.ckpt")).epoch is None


@pytest.mark.parametrize("loss", ["ce", "mtcsnn", "coral", "corn", "regression"])
def test_the_module_built_from_the_spec_is_the_one_training_builds(tmp_path, loss):
    cfg = compose_train(["data=synthetic", f"loss={loss}"], tmp_path)
    GlobalHydra.instance().clear()
    trained = build_module(cfg)
    spec = spec_of_config(OmegaConf.to_container(cfg, resolve=True), own=True)
    rebuilt = build_from_spec(spec)
    shapes = {k: v.shape for k, v in trained.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert type(rebuilt.loss) is type(trained.loss)
    for name in ("lam", "difference", "label_smoothing", "width", "num_classes"):
        assert getattr(rebuilt.loss, name, None) == getattr(trained.loss, name, None)
    assert rebuilt.loss.trains_score == trained.loss.trains_score
    assert rebuilt.net.dropout.p == trained.net.dropout.p


# ---------------------------------------------------------------- num_classes


def test_num_classes_other_than_5_is_refused_when_the_config_is_checked(tmp_path):
    cfg = compose_train(["data=synthetic", "model.num_classes=7"], tmp_path)
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="model.num_classes=7") as err:
        check_config(cfg)
    assert "\n" not in str(err.value)
    cfg = compose_train(["data=synthetic", "loss=coral", "loss.num_classes=3"], tmp_path)
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="loss.num_classes=3"):
        check_config(cfg)


@pytest.mark.parametrize(
    "build",
    [
        lambda: SiameseResNet(num_classes=7),
        lambda: CoralLoss(num_classes=7),
        lambda: CornLoss(num_classes=4),
        lambda: GradeRegressionLoss(num_classes=6),
        lambda: MTCSNNModule(SiameseResNet(), CoralLoss(), torch.optim.Adam, num_classes=7),
    ],
)
def test_the_models_and_losses_refuse_other_numbers_of_grades(build):
    with pytest.raises(ConfigError, match="num_classes"):
        build()


@pytest.mark.slow
def test_training_with_7_grades_is_one_error_line(tmp_path):
    result = run_module(
        "mtcsnn.train", "data=synthetic", "model.num_classes=7", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "num_classes=7" in line


# ---------------------------------------------------------------- old checkpoints


def old_format(source: Path, out: Path, **config_changes: object) -> Path:
    """``source`` as checkpoints were written before they held a spec."""
    state = state_of(source)
    del state["mtcsnn_spec"]
    state["mtcsnn_config"] = copy.deepcopy(state["mtcsnn_config"])
    for place, value in config_changes.items():
        *parents, last = place.split("__")
        node = state["mtcsnn_config"]
        for key in parents:
            node = node[key]
        node[last] = value
    return write(state, out)


def test_an_old_checkpoint_is_converted_once_into_the_same_spec(tiny_checkpoint, tmp_path):
    old = old_format(tiny_checkpoint, tmp_path / "old.ckpt")
    converted, new = load_checkpoint(old), load_checkpoint(tiny_checkpoint)
    assert converted.spec == new.spec
    images = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(converted.module(images).logits, new.module(images).logits)
    assert "mtcsnn_spec" not in state_of(old)  # converted in memory: the file is unchanged


@pytest.mark.parametrize(
    "change",
    [
        {"model__net__dropout": "${oc.env:MTCSNN_TEST_SECRET}"},
        {"loss___target_": "os.system"},
        {"data__root": "${oc.env:MTCSNN_TEST_SECRET}"},
        {"model__num_classes": 7},
        {"data__size": 100000},
        {"loss__unknown_setting": 1},
    ],
)
def test_an_old_checkpoint_that_is_not_plain_values_is_refused_in_one_line(
    tiny_checkpoint, tmp_path, monkeypatch, change
):
    monkeypatch.setenv("MTCSNN_TEST_SECRET", SECRET)
    old = old_format(tiny_checkpoint, tmp_path / "old.ckpt", **change)
    with pytest.raises(CheckpointError, match="refused to rebuild the model") as err:
        load_checkpoint(old)
    assert "\n" not in str(err.value) and SECRET not in str(err.value)


# ---------------------------------------------------------------- what eval reads and writes


def test_eval_never_reads_nor_writes_where_the_checkpoint_says(
    tiny_checkpoint, tmp_path, monkeypatch
):
    labels, cache = hostile_folder(tmp_path)
    hostile = {
        "_target_": "mtcsnn.data.FundusFolderDataModule",
        "labels": str(labels),
        "cache_dir": str(cache),
        "size": 28,
    }
    state = state_of(tiny_checkpoint)
    state["mtcsnn_config"]["data"] = hostile
    crafted = write(state, tmp_path / "crafted.ckpt")

    import mtcsnn.data.fundus_folder as fundus_folder

    def no_reading(*args, **kwargs):
        raise AssertionError(f"a labels CSV was read: {args}")

    monkeypatch.setattr(fundus_folder, "read_labels", no_reading)
    out = tmp_path / "out"
    metrics = evaluate(crafted, out, *SYNTHETIC)
    assert 0 <= metrics["test"]["auroc"] <= 1
    assert not cache.exists() and not (labels.parent / ".mtcsnn_cache").exists()
    assert sorted(p.name for p in labels.parent.iterdir()) == ["a.png", "labels.csv"]
    written = (out / "metrics.json").read_text()
    assert str(labels) not in written and str(cache) not in written


def test_a_secret_named_anywhere_in_the_saved_config_never_reaches_an_output(
    tiny_checkpoint, tmp_path, monkeypatch, caplog, capsys
):
    monkeypatch.setenv("MTCSNN_TEST_SECRET", SECRET)
    state = state_of(tiny_checkpoint)
    record = state["mtcsnn_config"]
    leak = "${oc.env:MTCSNN_TEST_SECRET}"
    record["seed"] = leak
    record["task_name"] = leak
    record["notes"] = {"deep": [leak]}
    record["model"]["net"]["dropout"] = leak
    record["data"]["root"] = leak
    crafted = write(state, tmp_path / "crafted.ckpt")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        evaluate(crafted, out, *SYNTHETIC)
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] is None  # not a plain integer: not read


def test_a_folder_trained_model_needs_the_photographs_named_on_the_command_line(
    tiny_checkpoint, tmp_path
):
    crafted = folder_trained(tiny_checkpoint, tmp_path / "folder.ckpt")
    from mtcsnn.eval import EvalDataError

    for data in ([], SYNTHETIC, ["data=fundus_folder"]):
        with pytest.raises(EvalDataError) as err:
            evaluate(crafted, tmp_path / "out", *data)
        message = str(err.value)
        assert "data=fundus_folder data.labels=" in message and "\n" not in message
        # the recorded name, shown as text
        assert "data=fundus_folder data.labels=<folder>/clinic_labels.csv" in message
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_data_size_other_than_the_specs_is_one_error(tiny_checkpoint, tmp_path):
    from mtcsnn.eval import EvalDataError

    with pytest.raises(EvalDataError, match="data.size=64 .* takes 28x28 images"):
        evaluate(tiny_checkpoint, tmp_path / "out", *SYNTHETIC, "data.size=64")


def test_a_normal_checkpoint_evaluates_to_the_numbers_of_its_run(tiny_checkpoint, tmp_path):
    run_dir = tiny_checkpoint.parent.parent
    trained = json.loads((run_dir / "metrics.json").read_text())
    out = tmp_path / "out"
    evaluated = evaluate(tiny_checkpoint, out, *SYNTHETIC)
    for stage in ("val", "test"):  # the grade metrics, referable DR and calibration
        assert flat(evaluated[stage]) == pytest.approx(flat(trained[stage]), abs=1e-6)
    assert evaluated["seed"] == trained["seed"]
    assert (out / "test_predictions.csv").read_text() == (
        run_dir / "test_predictions.csv"
    ).read_text()
    assert evaluated["model_specs"] == [state_of(tiny_checkpoint)["mtcsnn_spec"]]
    assert evaluated["config"]["data"]["size"] == 28  # from the spec


def test_predict_of_a_normal_checkpoint_gives_the_test_predictions(tiny_checkpoint):
    from mtcsnn.data import SyntheticDataModule
    from mtcsnn.inference.batch import predict_batch

    run_dir = tiny_checkpoint.parent.parent
    data = SyntheticDataModule(num_train=40, num_val=20, num_test=20, batch_size=16)
    data.setup()
    images, _ = data.splits["test"]
    probs, _ = predict_batch(
        load_checkpoint(tiny_checkpoint).module, list(images), torch.device("cpu")
    )
    with open(run_dir / "test_predictions.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    expected = torch.tensor([[float(r[f"prob_{c}"]) for c in range(5)] for r in rows])
    assert torch.allclose(probs, expected, atol=1e-5)


# ---------------------------------------------------------------- ensembles


def test_an_ensemble_of_other_preparations_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    other = with_spec(
        tiny_checkpoint,
        tmp_path / "medmnist.ckpt",
        preparation={"name": "medmnist", "version": 1},
        trained_on={"data": "retinamnist", "labels": None},
    )
    with pytest.raises(CheckpointError, match="prepared one way") as err:
        load_checkpoints([str(tiny_checkpoint), str(other)])
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the commands


@pytest.mark.slow
def test_eval_of_a_folder_trained_model_without_its_labels_is_one_error_line(
    tiny_checkpoint, tmp_path
):
    crafted = folder_trained(tiny_checkpoint, tmp_path / "folder.ckpt")
    result = run_module("mtcsnn.eval", f"ckpt_path={crafted}", f"hydra.run.dir={tmp_path / 'e'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "data=fundus_folder data.labels=" in line


@pytest.mark.slow
def test_eval_of_a_hostile_checkpoint_on_the_command_lines_data(tiny_checkpoint, tmp_path):
    labels, cache = hostile_folder(tmp_path)
    state = state_of(tiny_checkpoint)
    state["mtcsnn_config"]["data"] = {
        "_target_": "mtcsnn.data.FundusFolderDataModule",
        "labels": str(labels),
        "cache_dir": str(cache),
    }
    crafted = write(state, tmp_path / "crafted.ckpt")
    result = run_module(
        "mtcsnn.eval",
        f"ckpt_path={crafted}",
        *SYNTHETIC,
        f"hydra.run.dir={tmp_path / 'e'}",
        env={"MTCSNN_TEST_SECRET": SECRET},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not cache.exists() and not (labels.parent / ".mtcsnn_cache").exists()


def test_spec_errors_are_errors_the_commands_print_in_one_line():
    assert issubclass(SpecError, MTCSNNError) and issubclass(CheckpointError, MTCSNNError)


def test_the_spec_knows_the_preparation_the_folder_data_use_now():
    from mtcsnn.data.fundus_folder import PREPARATION_VERSION
    from mtcsnn.models.spec import PREPARATIONS

    # bumping the preparation must say which versions a spec may name (older ones differ)
    assert max(PREPARATIONS["fundus_disc_square"]) == PREPARATION_VERSION


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.size=600"], "data.size=600"),
        (["loss=regression", "loss.width=0"], "loss.width=0"),
        (["model.net.backbone=resnet1000"], "model.net.backbone='resnet1000'"),
    ],
)
def test_a_run_whose_model_no_spec_could_describe_is_a_config_error(tmp_path, overrides, key):
    cfg = compose_train(["data=synthetic", *overrides], tmp_path)
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="config error: " + key.replace("(", r"\(")):
        spec_of_config(OmegaConf.to_container(cfg, resolve=True), own=True)


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [
        ("/data/clinic/labels.csv", "labels.csv"),
        ("/x/evil\nerror: fake line.csv", "evil\\nerror: fake line.csv"),
        ("/x/${oc.env:MTCSNN_TEST_SECRET}.csv", "$ {oc.env:MTCSNN_TEST_SECRET}.csv"),
        (12, None),
    ],
)
def test_an_old_checkpoints_labels_path_becomes_a_printable_name(recorded, shown):
    from mtcsnn.run.config_spec import labels_name

    name = labels_name(recorded)
    assert name == shown
    if name is not None:
        assert parse_spec_labels(name) == name


def parse_spec_labels(name: str) -> str | None:
    from mtcsnn.models.spec import _labels_name

    return _labels_name(name)


def test_an_old_checkpoint_nested_too_deep_is_one_error_line(tiny_checkpoint, tmp_path):
    state = state_of(tiny_checkpoint)
    del state["mtcsnn_spec"]
    deep: dict = {}
    node = deep
    for _ in range(1500):  # deeper than Python's recursion limit allows a walk to go
        node["a"] = {}
        node = node["a"]
    state["mtcsnn_config"]["loss"]["nested"] = deep
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        torch.save(state, tmp_path / "deep.ckpt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="nested too deep") as err:
        load_checkpoint(tmp_path / "deep.ckpt")
    assert "\n" not in str(err.value)

"""Every command block of README.md, the docs pages and notebooks/README.md, run as a user types it.

The documents are read in the order a reader meets them: README.md, the pages in the order of
``nav`` in mkdocs.yml, then notebooks/README.md. They are cut into ``CHAINS``, each run by its
own test file (so pytest-xdist's two workers share them); within a chain, the commands run in
document order in one scratch folder (with ``../shared`` beside it, as in
a checkout), each through ``bash`` exactly as written, with only size-limiting overrides
appended (``data=synthetic``, one epoch, one seed, ...) and nothing that moves outputs. Then the
outputs the README documents for that command are checked. Placeholders (``<date>_<time>``,
``<run dir>``, ...) stand for the newest folder the earlier commands made.

A documented command that is neither run here nor listed in ``SKIPPED`` fails the test: a new
command must be added to this harness. A command that appears again in a chain, word for word,
runs once, where it first appears (assignments such as ``CKPT=`` and ``export`` run each time:
they are free, and later commands read them). A chain that starts after the README begins with the
environment the ``export`` lines before it set.

Once a command is checked, the checkpoints no later command can name are deleted: only the
newest run of ``logs/train/runs`` (``CKPT=``, ``init_from=``), the run ``$CKPT`` holds and the
runs of the newest ``paper_table`` sweep (resumed with ``corruptions=all``) are read again.
Each is 45-95 MB, and the suite must fit on a small disk.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DATA_DIR, ROOT
from PIL import Image

from helpers import forkserver


def nav_pages() -> list[str]:
    """The docs pages in the order of the site's navigation (mkdocs.yml), as repository paths."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs_dir = config.get("docs_dir", "docs")
    pages = []
    for entry in config["nav"]:
        (page,) = entry.values() if isinstance(entry, dict) else (entry,)
        pages.append(f"{docs_dir}/{page}")
    return pages


DOCS = ("README.md", *nav_pages(), "notebooks/README.md")
# where each chain after the first starts: pages from there on run in their own scratch folder
CHAIN_STARTS = ("docs/experiments.md",)

# one epoch on a small synthetic set: the command's own overrides stay, these only shrink it
SMALL = (
    "data=synthetic data.num_train=32 data.num_val=20 data.num_test=20 data.batch_size=16 "
    "trainer.max_epochs=1"
)
ONE_SEED = SMALL + " seed=1"
TWO_FOLDS = ONE_SEED + " data.folds=2 'data.fold=range(0,2)'"
# the photograph folders of the README's examples, made by the scratch fixture: a smaller size
PHOTOS = "data.size=64 data.batch_size=16 trainer.max_epochs=1"

# Commands that cannot run in CI, with the reason.
SKIPPED = {
    'pip install -e ".[test]"': "the install itself: .ci/run runs it in a fresh venv",
    "pip install -e .": "the install itself: .ci/run installs the same package with its extras",
    "pytest": "the suite itself: .ci/run runs it",
    "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu": (
        "an install from PyTorch's own index, which CI cannot reach"
    ),
    "python -m mtcsnn.train trainer=ddp trainer.accelerator=gpu trainer.devices=4": (
        "needs 4 GPUs; tests/test_ddp.py runs the same DDP code on 2 CPU processes"
    ),
    "python -m mtcsnn.train --multirun hydra/launcher=slurm experiment=paper_table trainer=gpu "
    "hydra.launcher.partition=gpu hydra.launcher.account=my_lab "
    "hydra.launcher.timeout_min=30": (
        "needs GPU nodes; tests/test_cluster.py runs the CPU variant below on CI's SLURM cluster"
    ),
    'sbatch --array=0-3 --cpus-per-task=2 --mem=4G --wrap "python -m mtcsnn.train '
    "hparams_search=resnet18_optuna hparams_search.n_trials=40 "
    'hparams_search.storage=logs/resnet18.journal trainer=cpu"': (
        "runs as typed on CI's SLURM cluster, in its own step: tests/test_cluster.py"
    ),
    "python -m mtcsnn.train --multirun hydra/launcher=slurm trainer=cpu "
    "hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=2 hydra.launcher.mem_gb=4 "
    "loss=ce,mtcsnn seed=1,2,3": (
        "runs as typed on CI's SLURM cluster, in its own step: tests/test_cluster.py"
    ),
    "python -m mtcsnn.report logs/paper_table/multiruns/<date>_<time>#slurm": (
        "reads the SLURM sweep above (the same report command runs after experiment=paper_table)"
    ),
    "python -m mtcsnn.bench --steps 60 --warmup 10 trainer=gpu "
    "model.net.channels_last=true": "needs a GPU",
    "python -m mtcsnn.bench --runs 8 --jobs 8 trainer=gpu model.net.channels_last=true": (
        "needs a GPU"
    ),
    "python -m mtcsnn.train experiment=paper_table hydra/launcher=parallel "
    "hydra.launcher.n_jobs=8 trainer=gpu model.net.channels_last=true": "needs a GPU",
    "wandb login": "needs a W&B account and the network; runs log offline without it",
    'pip install -e ".[notebooks]"': "an install into the test venv (JupyterLab, about 100 MB)",
    "jupyter lab notebooks/": "starts a server that waits for a browser; pytest runs the notebooks",
    "pip install .": "an install: .ci/wheel_smoke installs the wheel alone into a fresh venv",
    'pip install ".[wandb,explain]"': "an install into the test venv; [test] brings every extra",
    "python -m mtcsnn.train model.net.weights=imagenet "
    '"model.net.mean=[0.485,0.456,0.406]" "model.net.std=[0.229,0.224,0.225]"': (
        "downloads ImageNet weights; tests/test_pretrained.py checks the weights API with a file"
    ),
}


@dataclass(frozen=True)
class Run:
    """How one README command runs here: what is appended, and what it must leave behind."""

    append: str
    check: Callable[[set[Path], str], None]  # (the files the command wrote, its output)


def folders_with(written: set[Path], name: str) -> set[Path]:
    return {p.parent for p in written if p.name == name}


def runs(count: int) -> Callable[[set[Path], str], None]:
    """``count`` new training runs, each with the files README's run table lists."""

    def check(written: set[Path], output: str) -> None:
        run_dirs = folders_with(written, "metrics.json")
        assert len(run_dirs) == count, output
        for run_dir in run_dirs:
            assert (run_dir / "test_predictions.csv").is_file()
            assert (run_dir / "csv" / "metrics.csv").is_file()
            assert (run_dir / "train.log").stat().st_size > 0
            assert (run_dir / ".hydra" / "overrides.yaml").is_file()
            assert list((run_dir / "checkpoints").glob("epoch_*.ckpt"))

    return check


def report(rows: int, compared: int = 0) -> Callable[[set[Path], str], None]:
    """The report's files, ``rows`` configurations and ``compared`` MTCSNN-vs-CE rows."""

    def check(written: set[Path], output: str) -> None:
        (folder,) = folders_with(written, "results.md")
        table = (folder / "results.md").read_text()
        sections = {part.split("\n", 1)[0]: part for part in table.split("\n## ")}
        first = sections[table.split("\n", 1)[0]]
        assert len(re.findall(r"^\| \w+=.* \| 1 \| ", first, re.M)) == rows, table
        paired = sections.get("MTCSNN vs CE, same backbone and seed", "")
        assert len(re.findall(r"^\| \w+=.* \| 1 \| ", paired, re.M)) == compared, table
        names = {"results.md", "confusion_matrix.png", "roc_curves.png", "val_curves.png"}
        assert names <= {p.name for p in folder.iterdir()}, output
        assert "| test AUROC" in table

    return check


def cross_validated(configurations: int) -> Callable[[set[Path], str], None]:
    """A report with ``configurations`` rows of cross-validation (each seed's folds as one)."""

    def check(written: set[Path], output: str) -> None:
        (folder,) = folders_with(written, "results.md")
        summary = json.loads((folder / "summary.json").read_text())
        rows = summary["cross_validation"]["configurations"]
        assert len(rows) == configurations, output
        assert all(0 <= row["out_of_fold"]["auroc"] <= 1 for row in rows)
        assert "## Cross-validation" in (folder / "results.md").read_text()

    return check


def refitted(count: int) -> Callable[[set[Path], str], None]:
    """``count`` runs trained on every fold of the sweep above, their val figures out-of-fold."""

    def check(written: set[Path], output: str) -> None:
        runs(count)(written, output)
        for folder in folders_with(written, "metrics.json"):
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["refit"]["folds"] == 2, output
            assert metrics["config"]["data"]["fold"] == "all", output
            assert metrics["best_epoch_number"] == metrics["refit"]["epochs"]

    return check


def search(trials: int) -> Callable[[set[Path], str], None]:
    def check(written: set[Path], output: str) -> None:
        (folder,) = folders_with(written, "search.json")
        assert len(folders_with(written, "metrics.json")) == trials, output
        assert all(p.parent == folder for p in folders_with(written, "metrics.json"))

    return check


def evaluated(written: set[Path], output: str) -> None:
    assert folders_with(written, "metrics.json") == folders_with(written, "test_predictions.csv")
    assert len(folders_with(written, "metrics.json")) == 1, output


def predicted(*names: str, count: int) -> Callable[[set[Path], str], None]:
    """``predictions.csv`` with ``count`` rows, ``names`` among them."""

    def check(written: set[Path], output: str) -> None:
        (table,) = (p for p in written if p.name == "predictions.csv")
        with open(table) as f:
            paths = [row["path"] for row in csv.DictReader(f)]
        assert len(paths) == count, output
        assert set(names) <= set(paths), paths[:5]

    return check


# the files the README's predict commands name, as a user would have them
USER_FILES = ("photo.jpg", "more_photos/left.png", "more_photos/right.jpg")
ODD_NAMES = ("my photos/eye 1.jpg", "scan,left=1 [a].png", "fee$5.png")


def explained(written: set[Path], output: str) -> None:
    assert len([p for p in written if p.suffix == ".png"]) == 1, output


def benched(written: set[Path], output: str) -> None:
    assert "images/s" in output, output


def swept(written: set[Path], output: str) -> None:
    assert "framework/bare" in output and "1 runs of 1 epochs, 1 at a time" in output, output
    assert not written, output  # its runs go to a temporary folder


def kept(written: set[Path], output: str) -> None:
    assert "already finished, kept as it is" in output, output
    assert not folders_with(written, "metrics.json")


def exported(name: str, calibrated: bool = False) -> Callable[[set[Path], str], None]:
    def check(written: set[Path], output: str) -> None:
        (model,) = (p for p in written if p.name == name)
        about = json.loads((model.parent / "model.json").read_text())
        assert about["model"] == name and "not a medical device" in about["intended_use"]
        assert about["referral"]["calibrated"] is calibrated, about["referral"]

    return check


def debugged(written: set[Path], output: str) -> None:
    (run_dir,) = folders_with(written, "metrics.json")
    assert run_dir.parent.parent.name == "debug", run_dir


def with_tensorboard(written: set[Path], output: str) -> None:
    runs(1)(written, output)
    assert any(p.name.startswith("events.out.tfevents") for p in written), output


def nothing(written: set[Path], output: str) -> None:
    """An assignment: the harness keeps the variable for the next commands."""


def cleared(written: set[Path], output: str) -> None:
    notebooks = [p for p in written if p.suffix == ".ipynb"]
    assert len(notebooks) == 2, output
    for notebook in notebooks:
        cells = json.loads(notebook.read_text())["cells"]
        assert not any(cell.get("outputs") for cell in cells), notebook


def robust(rows: int, trained: bool = False) -> Callable[[set[Path], str], None]:
    """``robustness.csv`` with the clean row and ``rows - 1`` corrupted ones (in a new
    training run when ``trained``, else in an evaluation's folder)."""

    def check(written: set[Path], output: str) -> None:
        if trained:
            runs(1)(written, output)
        else:
            evaluated(written, output)
        (table,) = (p for p in written if p.name == "robustness.csv")
        lines = table.read_text().splitlines()
        assert lines[0] == "corruption,severity,auroc,acc,kappa,referable_auroc", lines[0]
        assert len(lines) == 1 + rows and lines[1].startswith("none,0,"), output

    return check


def measured(count: int) -> Callable[[set[Path], str], None]:
    """A finished sweep resumed with corruptions: ``count`` robustness tables, no new runs."""

    def check(written: set[Path], output: str) -> None:
        assert len([p for p in written if p.name == "robustness.csv"]) == count, output
        assert not folders_with(written, "metrics.json"), output

    return check


def reported(written: set[Path], output: str) -> None:
    """The report of one run: its table, in the run's own folder."""
    (folder,) = folders_with(written, "results.md")
    assert (folder / "metrics.json").is_file(), output
    assert "| test AUROC" in (folder / "results.md").read_text()


PAPER_TABLE = "python -m mtcsnn.train experiment=paper_table model=resnet18 "
VAL_CHOSEN_CE = PAPER_TABLE + (
    "loss=ce model/optimizer=adamw model/scheduler=cosine optimized_metric=val/loss "
    "hydra.sweep.dir=logs/paper_table/multiruns/val_chosen_ce"
)
VAL_CHOSEN_MTCSNN = PAPER_TABLE + (
    "loss=mtcsnn loss.label_smoothing=0.1 optimized_metric=val/loss "
    "hydra.sweep.dir=logs/paper_table/multiruns/val_chosen_mtcsnn"
)
STRONG_CORRUPT = PAPER_TABLE + (
    "data.augment=strong_corrupt hydra.sweep.dir=logs/paper_table/multiruns/strong_corrupt"
)
CV_RECIPE = (
    "python -m mtcsnn.train experiment=cv loss=ce,mtcsnn seed=1,2,3 hydra/launcher=parallel "
    "hydra.launcher.n_jobs=2 hydra.sweep.dir=logs/cv/multiruns/seeds123"
)
REFIT_RECIPE = (
    "python -m mtcsnn.train --multirun refit_from=logs/cv/multiruns/seeds123 loss=ce,mtcsnn "
    "seed=1,2,3 hydra/launcher=parallel hydra.launcher.n_jobs=2 "
    "hydra.sweep.dir=logs/refit/multiruns/seeds123"
)
# candidate recipes cross-validated like the default one (docs/results.md): folder -> settings
CV_CANDIDATES = {
    "val_chosen_ce": (
        "loss=ce model/optimizer=adamw model/scheduler=cosine optimized_metric=val/loss"
    ),
    "val_chosen_mtcsnn": "loss=mtcsnn loss.label_smoothing=0.1 optimized_metric=val/loss",
    "mtcsnn_lam01": "loss=mtcsnn loss.lam=0.1",
    "mtcsnn_lam1": "loss=mtcsnn loss.lam=1",
    "ce_adamw_cosine": "loss=ce model/optimizer=adamw model/scheduler=cosine",
    "mtcsnn_ls01": "loss=mtcsnn loss.label_smoothing=0.1",
    "ce_ls01": "loss=ce loss.label_smoothing=0.1",
    "mtcsnn_adamw_cosine": "loss=mtcsnn model/optimizer=adamw model/scheduler=cosine",
    "ce_val_loss": "loss=ce optimized_metric=val/loss",
    "mtcsnn_val_loss": "loss=mtcsnn optimized_metric=val/loss",
}


def cv_candidate(folder: str, settings: str) -> str:
    return (
        f"python -m mtcsnn.train experiment=cv seed=1,2,3 {settings} hydra/launcher=parallel "
        f"hydra.launcher.n_jobs=2 hydra.sweep.dir=logs/cv/multiruns/{folder}"
    )


CV_CANDIDATES_REPORT = (
    "python -m mtcsnn.report logs/cv/multiruns/seeds123 "
    + " ".join(f"logs/cv/multiruns/{folder}" for folder in CV_CANDIDATES)
    + " --out docs/results/cv_recipes"
)

RUN = {
    "python -m mtcsnn.train": Run("trainer.max_epochs=1", runs(1)),
    "python -m mtcsnn.train trainer.max_epochs=10": Run(SMALL, runs(1)),
    "python -m mtcsnn.report logs/train/runs/<date>_<time>": Run("", reported),
    "python -m mtcsnn.predict ckpt_path=$CKPT inputs=[photo.jpg]": Run(
        "progress=false", predicted("photo.jpg", count=1)
    ),
    "python -m mtcsnn.train loss=ce": Run(SMALL, runs(1)),
    "python -m mtcsnn.train grading.threshold_rule=youden": Run(SMALL, runs(1)),
    "python -m mtcsnn.predict ckpt_path=$CKPT inputs=[photo.jpg] calibrated=true": Run(
        "progress=false", predicted("photo.jpg", count=1)
    ),
    "python -m mtcsnn.export ckpt_path=$CKPT format=onnx calibrated=true": Run(
        "", exported("model.onnx", calibrated=True)
    ),
    # the 400 test images, clean and under 8 corruptions x 5 severities
    "python -m mtcsnn.eval ckpt_path=$CKPT corruptions=all": Run("", robust(41)),
    "python -m mtcsnn.train corruptions=[contrast_down,motion_blur]": Run(
        SMALL, robust(11, trained=True)
    ),
    "python -m mtcsnn.train model=resnet50 loss.lam=1.0 seed=3": Run(SMALL, runs(1)),
    "python -m mtcsnn.train model.net.stem=cifar": Run(SMALL, runs(1)),
    "python -m mtcsnn.train trainer.max_epochs=10 data.batch_size=64": Run(SMALL, runs(1)),
    "python -m mtcsnn.train --multirun model=resnet18,resnet34,resnet50 loss=ce,mtcsnn": Run(
        SMALL, runs(6)
    ),
    "python -m mtcsnn.train --multirun loss.lam=0,0.25,0.5,1,2 seed=1,2,3": Run(ONE_SEED, runs(5)),
    "python -m mtcsnn.train experiment=paper_table": Run(ONE_SEED, runs(6)),
    "python -m mtcsnn.train experiment=lambda_sweep": Run(ONE_SEED, runs(6)),
    # two folds of one seed for each loss
    "python -m mtcsnn.train experiment=cv loss=ce,mtcsnn seed=1,2,3": Run(TWO_FOLDS, runs(4)),
    "python -m mtcsnn.report logs/cv/multiruns/<date>_<time>": Run("", cross_validated(2)),
    # the settings of the sweep above: its folds of seed 1
    "python -m mtcsnn.train refit_from=logs/cv/multiruns/<date>_<time> loss=mtcsnn seed=1": Run(
        SMALL, refitted(1)
    ),
    "python -m mtcsnn.train experiment=lambda_sweep loss.lam=0.1 loss.difference=signed": Run(
        ONE_SEED, runs(1)
    ),
    "python -m mtcsnn.train experiment=lambda_sweep loss.lam=0.1 loss.difference=absolute "
    "data.pairing=balanced": Run(ONE_SEED, runs(1)),
    # the default recipe's study, its robustness and its report (docs/results.md), one seed
    "python -m mtcsnn.train experiment=paper_table model=resnet18 hydra/launcher=parallel "
    "hydra.launcher.n_jobs=2": Run(ONE_SEED, runs(2)),
    "python -m mtcsnn.train experiment=paper_table model=resnet18 "
    "hydra.sweep.dir=logs/paper_table/multiruns/<date>_<time> resume=true corruptions=all": Run(
        ONE_SEED, measured(2)
    ),
    "python -m mtcsnn.report logs/paper_table/multiruns/<date>_<time> "
    "--out docs/results/default_recipe": Run("", report(2, 1)),
    # the default recipe cross-validated and refit (docs/results.md): two folds of one seed
    CV_RECIPE: Run(TWO_FOLDS, runs(4)),
    REFIT_RECIPE: Run(SMALL + " seed=1", refitted(2)),
    "python -m mtcsnn.report logs/cv/multiruns/seeds123 logs/refit/multiruns/seeds123 "
    "--out docs/results/cv": Run("", cross_validated(2)),
    # two folds of one seed each; the report puts them beside the default recipe's above
    **{
        cv_candidate(folder, settings): Run(TWO_FOLDS, runs(2))
        for folder, settings in CV_CANDIDATES.items()
    },
    # the default recipe's two configurations and one for each candidate
    CV_CANDIDATES_REPORT: Run("", cross_validated(2 + len(CV_CANDIDATES))),
    # each loss's val-chosen settings and the corruption augmentation (docs/results.md), one seed
    VAL_CHOSEN_CE: Run(ONE_SEED, runs(1)),
    VAL_CHOSEN_CE + " resume=true corruptions=all": Run(ONE_SEED, measured(1)),
    VAL_CHOSEN_MTCSNN: Run(ONE_SEED, runs(1)),
    VAL_CHOSEN_MTCSNN + " resume=true corruptions=all": Run(ONE_SEED, measured(1)),
    STRONG_CORRUPT + " hydra/launcher=parallel hydra.launcher.n_jobs=2": Run(ONE_SEED, runs(2)),
    STRONG_CORRUPT + " resume=true corruptions=all": Run(ONE_SEED, measured(2)),
    "python -m mtcsnn.report logs/paper_table/multiruns/<date>_<time> "
    "logs/paper_table/multiruns/val_chosen_ce logs/paper_table/multiruns/val_chosen_mtcsnn "
    "logs/paper_table/multiruns/strong_corrupt --out docs/results/screening": Run("", report(6, 2)),
    # 3 backbones x 2 losses, one seed; each MTCSNN row paired with its CE row
    "python -m mtcsnn.report logs/paper_table/multiruns/<date>_<time>": Run("", report(6, 3)),
    "python -m mtcsnn.train hparams_search=resnet18_optuna": Run(
        SMALL + " hparams_search.n_trials=2", search(2)
    ),
    "python -m mtcsnn.train hparams_search=resnet18_optuna hparams_search.n_trials=50 "
    "hparams_search.storage=sqlite:///logs/optuna.db": Run(
        SMALL + " hparams_search.n_trials=2", search(2)
    ),
    "CKPT=logs/train/runs/<date>_<time>/checkpoints/epoch_012.ckpt": Run("", nothing),
    "python -m mtcsnn.eval ckpt_path=$CKPT": Run("", evaluated),
    # photo.jpg, the two files in more_photos/, the 1,600 images of retinamnist.npz's splits
    "python -m mtcsnn.predict ckpt_path=$CKPT inputs=[photo.jpg,more_photos/,retinamnist.npz]": (
        Run("progress=false", predicted(*USER_FILES, "retinamnist.npz:val_images[0]", count=1603))
    ),
    "python -m mtcsnn.predict ckpt_path=$CKPT "
    "\"inputs=['my photos/eye 1.jpg','scan,left=1 [a].png','fee\\$5.png']\"": Run(
        "progress=false", predicted(*ODD_NAMES, count=3)
    ),
    "python -m mtcsnn.explain ckpt_path=$CKPT inputs=[photo.jpg]": Run("progress=false", explained),
    "python -m mtcsnn.train experiment=ordinal_ablation": Run(ONE_SEED, runs(5)),
    "python -m mtcsnn.report logs/ordinal_ablation/multiruns/<date>_<time>": Run("", report(5, 4)),
    "MTCSNN_DATA_DIR=../shared/data python -m mtcsnn.bench --steps 30": Run(
        "--steps 3 --warmup 1", benched
    ),
    "MTCSNN_DATA_DIR=../shared/data python -m mtcsnn.bench --runs 4 --jobs 2 --epochs 10": Run(
        "--runs 1 --jobs 1 --epochs 1 data=synthetic data.num_train=32 data.num_val=20 "
        "data.num_test=20 "
        "data.batch_size=16",
        swept,
    ),
    "MTCSNN_DATA_DIR=../shared/data python -m mtcsnn.train experiment=paper_table": Run(
        ONE_SEED, runs(6)
    ),
    "MTCSNN_DATA_DIR=../shared/data python -m mtcsnn.train --multirun "
    "model=resnet18,resnet34,resnet50 loss=ce,mtcsnn": Run(SMALL, runs(6)),
    "python -m mtcsnn.report logs/train/multiruns/<date>_<time>": Run("", report(6, 3)),
    "python -m mtcsnn.train logger=csv_wandb": Run(SMALL, runs(1)),
    "python -m mtcsnn.train logger=csv_wandb logger.wandb.entity=my-team "
    "logger.wandb.project=dr": Run(SMALL, runs(1)),
    "python -m mtcsnn.train <same overrides> hydra.run.dir=<run dir> resume=true": Run("", kept),
    "python -m mtcsnn.train --multirun <same sweep> hydra.sweep.dir=<sweep dir> resume=true": Run(
        "", kept
    ),
    "export MTCSNN_DATA_DIR=/path/to/folder": Run("", nothing),
    "python -m mtcsnn.train data=fundus_folder data.labels=my_photos/labels.csv data.size=224": Run(
        PHOTOS, runs(1)
    ),
    "python -m mtcsnn.train data=fundus_folder data.labels=aptos/train.csv "
    "data.path_column=id_code data.grade_column=diagnosis data.path_prefix=train_images/ "
    "data.path_suffix=.png data.size=224": Run(PHOTOS, runs(1)),
    "python -m mtcsnn.train trainer.max_epochs=20 "
    "init_from=logs/train/runs/<date>_<time>/checkpoints/epoch_012.ckpt": Run(SMALL, runs(1)),
    "python -m mtcsnn.train debug=default": Run("", debugged),
    "python -m mtcsnn.train --multirun experiment=strong_recipe loss=ce,mtcsnn seed=1,2,3,4,5": Run(
        ONE_SEED, runs(2)
    ),
    "python -m mtcsnn.train callbacks=early_stopping logger=csv_tensorboard": Run(
        SMALL, with_tensorboard
    ),
    "python -m mtcsnn.export ckpt_path=$CKPT format=onnx": Run("", exported("model.onnx")),
    "python -m mtcsnn.export ckpt_path=$CKPT format=torchscript": Run("", exported("model.pt")),
    "jupyter nbconvert --clear-output --inplace notebooks/*.ipynb": Run("", cleared),
}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    key: str  # the text, or text#tag where the same text appears twice with other meanings
    repeat_of: str = ""  # where the same command ran before: it is not run again

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def documented_commands() -> list[Command]:
    """The shell commands of the docs' ```bash blocks, continuations joined, comments cut."""
    commands = []
    for doc in DOCS:
        source = (ROOT / doc).read_text()
        for block in re.finditer(r"```bash\n(.*?)```", source, re.S):
            first_line = source[: block.start()].count("\n") + 2
            joined = re.sub(r"\\\n\s*", "", block.group(1))
            for offset, raw in enumerate(joined.splitlines()):
                text = re.sub(r"\s+#.*$", "", raw).strip()
                if text and not text.startswith("#"):
                    commands.append(Command(doc, first_line + offset, text, text))
    return tag_repeats(commands)


def mark_repeats(commands: list[Command]) -> list[Command]:
    """A command seen before in its chain, word for word, runs once; assignments run each time."""
    first: dict[str, str] = {}
    marked = []
    for command in commands:
        repeat_of = "" if ASSIGNMENT.match(command.text) else first.get(command.key, "")
        first.setdefault(command.key, command.id)
        marked.append(Command(command.doc, command.line, command.text, command.key, repeat_of))
    return marked


def tag_repeats(commands: list[Command]) -> list[Command]:
    """The report after the SLURM sweep reads that sweep: it is skipped, the later one runs."""
    tagged = []
    for i, command in enumerate(commands):
        key = command.text
        after_slurm = i and "hydra/launcher=slurm" in commands[i - 1].text
        if after_slurm and command.text.startswith("python -m mtcsnn.report"):
            key += "#slurm"
        tagged.append(Command(command.doc, command.line, command.text, key))
    return tagged


ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Z_]+)=(\S+)$")
COMMANDS = documented_commands()


def chains() -> list[list[Command]]:
    """The commands cut where each of ``CHAIN_STARTS`` begins."""
    cuts = [DOCS.index(doc) for doc in CHAIN_STARTS]
    bounds = list(zip([0, *cuts], [*cuts, len(DOCS)], strict=True))
    return [mark_repeats([c for c in COMMANDS if c.doc in DOCS[a:b]]) for a, b in bounds]


CHAINS = chains()


def unknown_and_stale() -> tuple[list[str], list[str]]:
    """Documented commands the harness does not know; harness entries the docs no longer have."""
    keys = [c.key for c in COMMANDS]
    unknown = [k for k in keys if k not in RUN and k not in SKIPPED]
    stale = [k for k in (*RUN, *SKIPPED) if k not in keys]
    return unknown, stale


def make_scratch(tmp_path_factory) -> Path:
    """A folder laid out like a checkout: ``../shared/data``, the user's own images, notebooks."""
    base = tmp_path_factory.mktemp("readme")
    (base / "shared").mkdir()
    (base / "shared" / "data").symlink_to(DATA_DIR)
    project = base / "project"
    project.mkdir()
    rng = np.random.default_rng(0)
    for name in (*USER_FILES, *ODD_NAMES):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(image).save(project / name)
    shutil.copy(DATA_DIR / "retinamnist.npz", project / "retinamnist.npz")
    photo_folders(project, rng)
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    for notebook in (project / "notebooks").glob("*.ipynb"):  # outputs for nbconvert to clear
        content = json.loads(notebook.read_text())
        code = next(cell for cell in content["cells"] if cell["cell_type"] == "code")
        code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["printed\n"]}]
        notebook.write_text(json.dumps(content))
    return project


def fundus_photo(rng: np.random.Generator, grade: int) -> Image.Image:
    """A camera-like photograph: a bright disc, cut at top and bottom, on a black frame."""
    yy, xx = np.mgrid[0:200, 0:300]
    disc = (xx - 150) ** 2 + (yy - 100) ** 2 < 120**2
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[disc] = rng.integers(40 + 30 * grade, 60 + 30 * grade, (int(disc.sum()), 3))
    return Image.fromarray(image)


def photo_folders(project: Path, rng: np.random.Generator) -> None:
    """``my_photos/`` (labels.csv: path,grade) and APTOS 2019's layout, as the README names them."""
    (project / "my_photos" / "eyes").mkdir(parents=True)
    (project / "aptos" / "train_images").mkdir(parents=True)
    mine, aptos = ["path,grade"], ["id_code,diagnosis"]
    for i in range(30):
        fundus_photo(rng, i % 5).save(project / "my_photos" / "eyes" / f"{i:03d}.jpg")
        mine.append(f"eyes/{i:03d}.jpg,{i % 5}")
        fundus_photo(rng, i % 5).save(project / "aptos" / "train_images" / f"0a{i:03d}.png")
        aptos.append(f"0a{i:03d},{i % 5}")
    (project / "my_photos" / "labels.csv").write_text("\n".join(mine) + "\n")
    (project / "aptos" / "train.csv").write_text("\n".join(aptos) + "\n")


# what ``<date>_<time>`` stands for: a folder Hydra named (a sweep named by the docs is not one)
DATED = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def newest_or_none(folder: Path, named: re.Pattern | None = None) -> Path | None:
    """The most recently written sub-folder of ``folder`` (whose name ``named`` matches);
    None when there is none yet."""
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir()]
    found = sorted(
        (p for p in found if named is None or named.fullmatch(p.name)),
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1] if found else None


def newest(folder: Path, named: re.Pattern | None = None) -> Path:
    found = newest_or_none(folder, named)
    if found is None:
        pytest.fail(f"{folder} is empty: this command needs the commands above it")
    return found


def overrides_of(run_dir: Path, multirun: bool) -> str:
    """The overrides a run (or a sweep) was started with, as typed."""
    if multirun:
        saved = yaml.safe_load((run_dir / "multirun.yaml").read_text())["hydra"]["overrides"]
        return " ".join(saved["task"])
    return " ".join(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()))


def fill_placeholders(text: str, cwd: Path) -> str:
    """The documented placeholders, filled with what the earlier commands made."""
    if "<run dir>" in text:
        run_dir = newest(cwd / "logs" / "train" / "runs")
        text = text.replace("<same overrides>", overrides_of(run_dir, multirun=False))
        text = text.replace("<run dir>", str(run_dir.relative_to(cwd)))
    if "<sweep dir>" in text:
        sweep_dir = newest(cwd / "logs" / "train" / "multiruns")
        text = text.replace("<same sweep>", overrides_of(sweep_dir, multirun=True))
        text = text.replace("<sweep dir>", str(sweep_dir.relative_to(cwd)))
    for match in re.finditer(r"([^\s=]*?)/<date>_<time>", text):
        made = newest(cwd / match.group(1), DATED)
        text = text.replace(match.group(0), str(made.relative_to(cwd)))
    placeholder = re.search(r"([^\s=]+)/epoch_012\.ckpt", text)
    if placeholder:  # the best epoch of the run: whichever one it is
        (best,) = (cwd / placeholder.group(1)).glob("epoch_*.ckpt")
        text = text.replace("epoch_012.ckpt", best.name)
    return text.replace("/path/to/folder", "../shared/data")


def make_shell_env(chain: list[Command]) -> dict[str, str]:
    """The variables the docs' commands set (``export``, ``CKPT=``), kept between them: at the
    start of a chain, those the ``export`` lines before it set."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("MTCSNN_DATA_DIR", None)  # a new user's shell: only what the docs tell to set
    for command in (c for c in COMMANDS if DOCS.index(c.doc) < DOCS.index(chain[0].doc)):
        assignment = ASSIGNMENT.match(command.text)
        if command.text.startswith("export ") and assignment and "<" not in command.text:
            env[assignment.group(1)] = fill_placeholders(assignment.group(2), Path("."))
    return env


def run_as_written(command: Command, scratch: Path, shell_env: dict[str, str]) -> None:
    """One documented command, run in ``scratch`` and checked; skipped where it cannot run."""
    if command.key in SKIPPED:
        pytest.skip(SKIPPED[command.key])
    if command.repeat_of:
        pytest.skip(f"the same command as {command.repeat_of}, run there")
    spec = RUN[command.key]
    text = fill_placeholders(command.text, scratch)
    assignment = ASSIGNMENT.match(text)
    if assignment:
        name, value = assignment.groups()
        shell_env[name] = value
        return
    before = {p: p.stat().st_mtime_ns for p in scratch.rglob("*") if p.is_file()}
    line = f"{text} {spec.append}".strip()
    module = forkserver.module_command(line, shell_env)
    if module is not None:
        result = forkserver.run(*module, env=shell_env, cwd=scratch)
    else:
        result = subprocess.run(
            ["bash", "-c", line],
            cwd=scratch,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{text} {spec.append}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    written = {
        p for p in scratch.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns
    }
    spec.check(written, output)
    drop_unread_checkpoints(scratch, shell_env)


def drop_unread_checkpoints(scratch: Path, shell_env: dict[str, str]) -> None:
    last_run = newest_or_none(scratch / "logs" / "train" / "runs")
    keep = {last_run / "checkpoints"} if last_run is not None else set()
    if "CKPT" in shell_env:
        keep.add((scratch / shell_env["CKPT"]).parent)
    # the newest paper_table sweep: a resumed sweep measures its runs' kept checkpoints
    last_sweep = newest_or_none(scratch / "logs" / "paper_table" / "multiruns")
    if last_sweep is not None:
        keep |= {job / "checkpoints" for job in last_sweep.iterdir() if job.is_dir()}
    for checkpoint in scratch.rglob("*.ckpt"):
        if checkpoint.parent not in keep:
            checkpoint.unlink()

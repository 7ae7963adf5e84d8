import json
import os

import numpy as np
import pytest
from helpers.cli import run_train
from helpers.wandb_records import offline_run
from PIL import Image

from mtcsnn.data import SyntheticDataModule

TINY = [
    "experiment=smoke",
    "data.num_train=40",
    "data.num_val=20",
    "data.num_test=20",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=csv_wandb",
]


def run_without_login(tmp_path, *args, **env):
    """The train CLI with no W&B key, no ~/.netrc and no WANDB_MODE unless given."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    clean.update({"HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config"), **env})
    return run_train(*TINY, *args, env=clean, inherit=False)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One run without a login, logging its best checkpoint: what several tests read."""
    tmp_path = tmp_path_factory.mktemp("logged")
    run_dir = tmp_path / "run"
    proc = run_without_login(
        tmp_path, f"hydra.run.dir={run_dir}", "seed=3", "logger.wandb.log_model=true"
    )
    return proc, run_dir


@pytest.mark.slow
def test_no_login_logs_offline_with_summary_and_resolved_config(logged_run):
    proc, run_dir = logged_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "no API key or login found" in output and "wandb sync" in output
    run = offline_run(run_dir)
    # a few lines of W&B's, not its ~35 (version, advice, history and summary charts): where
    # the offline run is and the command that uploads it
    wandb_lines = [line for line in output.splitlines() if "wandb" in line.lower()]
    assert len(wandb_lines) <= 5, "\n".join(wandb_lines)
    assert f"wandb sync {run['file'].parent}" in output
    assert "Run history" not in output and "anonymous" not in output
    for metric in ("test/auroc", "test/acc", "test/kappa", "test/mae"):
        assert isinstance(run["summary"][metric], float)
    # the W&B plots and the table of test images were logged with the run
    assert run["summary"]["test/confusion_matrix_table.nrows"] == 25  # 5 x 5 grades
    assert run["summary"]["test/roc_table.nrows"] > 0
    assert run["summary"]["test/examples.nrows"] == 16
    check_example_images(run, run_dir)
    config = run["config"]
    assert config["model.optimizer.lr"] == 0.001
    assert config["loss.lam"] == 0.5 and config["seed"] == 3
    assert config["model.net.backbone"] == "resnet18"
    assert run["name"] == "resnet18-mtcsnn-lam0.5-seed3"
    assert run["job_type"] == "smoke" and "mtcsnn" in run["tags"]


def check_example_images(run: dict, run_dir) -> None:
    """The table's images are files that ``wandb sync`` uploads, inside the run's folder.

    The run's own table JSON names each image only by its type ("Image"); W&B keeps the table
    with its images as a "run_table" artifact, and the web page shows that.
    """
    tables = [files for kind, files in run["artifact_files"] if kind == "run_table"]
    (files,) = [f for f in tables if any(p.startswith("test/examples") for p in f)]
    (table_path,) = [p for p in files if p.endswith(".table.json")]
    table = json.loads(files[table_path].read_text())
    image_column = table["columns"].index("image")
    index_column = table["columns"].index("index")
    datamodule = SyntheticDataModule(num_train=40, num_val=20, num_test=20)
    datamodule.setup()
    test_images, _ = datamodule.splits["test"]
    assert len(table["data"]) == 16
    for row in table["data"]:
        cell = row[image_column]
        assert cell["_type"] == "image-file"
        local = files[cell["path"]]
        assert local.is_file() and run_dir in local.parents  # travels with the run
        pixels = np.asarray(Image.open(local).convert("RGB"))
        expected = test_images[row[index_column]].permute(1, 2, 0).numpy()
        assert np.array_equal(pixels, expected)


@pytest.mark.slow
def test_each_multirun_job_is_its_own_run_in_one_group(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_without_login(
        tmp_path, "--multirun", "loss=ce,mtcsnn", f"hydra.sweep.dir={sweep_dir}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [offline_run(sweep_dir / job) for job in ("0", "1")]
    assert runs[0]["id"] != runs[1]["id"]
    assert runs[0]["group"] == runs[1]["group"] == f"smoke-{sweep_dir.name}"
    assert {r["name"] for r in runs} == {"resnet18-ce-lam0-seed42", "resnet18-mtcsnn-lam0.5-seed42"}
    for run in runs:  # each job finished with its own test metrics
        assert "test/auroc" in run["summary"]


@pytest.mark.slow
def test_api_key_never_lands_in_a_written_file(tmp_path):
    secret = "fake0123456789abcdef0123456789abcdef0123"
    run_dir = tmp_path / "run"
    proc = run_without_login(
        tmp_path, f"hydra.run.dir={run_dir}", WANDB_API_KEY=secret, WANDB_MODE="offline"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and len(written) > 5
    for path in written:
        assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_best_checkpoint_as_artifact_offline(logged_run):
    proc, run_dir = logged_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = offline_run(run_dir)
    assert ("model", ["model.ckpt"]) in run["artifacts"]
    assert run["exit_code"] == 0


@pytest.mark.slow
def test_a_failing_job_still_finishes_its_run(tmp_path):
    run_dir = tmp_path / "run"
    # one training image cannot form a pair: the job fails inside fit
    proc = run_without_login(tmp_path, f"hydra.run.dir={run_dir}", "data.num_train=1")
    assert proc.returncode != 0
    assert offline_run(run_dir)["exit_code"] == 1


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    from pathlib import Path

    run_dir = tmp_path / "run"
    tests_dir = str(Path(__file__).parent)
    common = ["trainer.max_epochs=2", f"hydra.run.dir={run_dir}"]
    stopped = run_without_login(
        tmp_path,
        *common,
        "+callbacks.interrupt._target_=helpers.interrupt.SigtermAt",
        "+callbacks.interrupt.epoch=0",
        "+callbacks.interrupt.batch=0",
        PYTHONPATH=tests_dir,
    )
    assert "stopped by SIGTERM after epoch 1" in stopped.stderr, stopped.stderr[-2000:]
    resumed = run_without_login(
        tmp_path,
        *common,
        "+callbacks.interrupt._target_=helpers.interrupt.SigtermAt",
        "+callbacks.interrupt.epoch=0",
        "+callbacks.interrupt.batch=0",
        "resume=true",
        PYTHONPATH=tests_dir,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    folders = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    assert all(name.endswith(f"-{run_id}") for name in folders)

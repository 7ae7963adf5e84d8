"""Sweeps and runs as the docs promise: a config error fails only its own job and says why in
its folder, a live sweep folder is held, a resume compares every setting that changes training,
a start removes what a killed write left, a damaged last.ckpt falls back to a whole checkpoint,
and the run's lock and record are never written through a planted link."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from helpers.cli import run_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtcsnn.errors import ConfigError
from mtcsnn.reporting import grouping
from mtcsnn.run.config import NOT_TRAINING_KEYS, changes_training
from mtcsnn.run.failures import BuildError, our_error
from mtcsnn.run.run_dir import (
    RunDirError,
    check_resume,
    config_differences,
    hold,
    keep_original,
    release,
    restore_original,
)
from mtcsnn.run.training import claim_run_dir, resume_point

SMALL = [
    "data=synthetic",
    "data.num_train=40",
    "data.num_val=20",
    "data.num_test=20",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


# --- a config error fails only its own job, and its folder says why --------------------------


@pytest.mark.slow
def test_a_config_error_fails_only_its_job_and_the_ended_sweep_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["--multirun", *SMALL, "loss.lam=-1,0.5", f"hydra.sweep.dir={sweep}"]
    proc = run_train(*args)
    assert proc.returncode == 1
    assert "1 of 2 sweep jobs failed" in proc.stderr
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert "loss.lam=-1" in failed["error"] and failed["type"] == "ConfigError"
    assert not (sweep / "0" / "metrics.json").exists()
    metrics = (sweep / "1" / "metrics.json").read_text()  # the job after the failure ran
    # the sweep that ended holds its folder no more: resuming it keeps the finished job
    again = run_train(*args, "resume=true")
    assert again.returncode == 1 and "1 of 2 sweep jobs failed" in again.stderr
    assert "kept as it is" in again.stdout + again.stderr
    assert (sweep / "1" / "metrics.json").read_text() == metrics


@pytest.mark.parametrize("value", ["loss.lam=-1", "model.net.dropout=2"])
def test_a_single_run_stopped_by_a_range_error_says_why_in_its_folder(tiny_cfg, tmp_path, value):
    from mtcsnn.train import main

    with pytest.raises(ConfigError, match=value.split("=")[0]):
        main.__wrapped__(tiny_cfg(value))  # the command's task; its wrapper prints the line
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["type"] == "ConfigError" and value in failed["error"]
    assert "traceback" not in failed  # an error of ours: the line says it all


@pytest.mark.parametrize(
    ("values", "key", "refusal"),
    [
        (["model.optimizer.lr=-1"], "model.optimizer=", "Invalid learning rate"),
        (["model/optimizer=adamw", "+model.optimizer.betas=[0.9,1.5]"], "model.optimizer=", "beta"),
        (["model/scheduler=exponential", "model.scheduler.gamma=hello"], "model.scheduler=", ""),
    ],
)
def test_what_torch_refuses_in_the_optimiser_or_schedule_is_a_config_error_before_training(
    tiny_cfg, tmp_path, values, key, refusal
):
    from mtcsnn.train import main

    with pytest.raises(ConfigError, match=key) as raised:
        main.__wrapped__(tiny_cfg(*values))
    assert refusal in str(raised.value) and "\n" not in str(raised.value)
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["type"] == "ConfigError" and key in failed["error"]
    assert not (tmp_path / "checkpoints").exists()  # refused before anything trained


@pytest.mark.slow
def test_a_config_error_raised_while_the_data_is_built_is_one_line_and_recorded(tmp_path):
    args = ["data=fundus_folder", "data.labels=absent.csv", "data.val_fraction=2", "trainer=cpu"]
    line = one_error_line(run_train(*args, f"hydra.run.dir={tmp_path}"))
    assert "data.val_fraction=2" in line  # named by its config key, not the class's argument
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["type"] == "ConfigError" and "data.val_fraction=2" in failed["error"]


def test_an_error_of_another_library_while_building_is_one_line_with_its_traceback_kept():
    cfg = OmegaConf.create({"net": {"_target_": "torch.nn.Linear", "in_features": -1}})
    with pytest.raises(Exception) as raised:
        instantiate(cfg.net, out_features=2)
    error = our_error(raised.value)
    assert isinstance(error, BuildError)
    assert str(error).startswith("config error: cannot build net (torch.nn")
    assert "\n" not in str(error) and error.__cause__ is not None


def test_an_error_of_ours_while_building_is_named_by_its_config_key():
    cfg = OmegaConf.create(
        {"data": {"_target_": "mtcsnn.data.FundusFolderDataModule", "labels": "x.csv"}}
    )
    with pytest.raises(Exception) as raised:
        instantiate(cfg.data, val_fraction=5)
    error = our_error(raised.value)
    assert isinstance(error, ConfigError) and error.key == "data.val_fraction"


# --- a live sweep folder is held ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=parallel"]], ids=["basic", "joblib"])
def test_a_second_sweep_into_a_live_sweep_folder_is_refused_before_any_job(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    hold(sweep, what="sweep")  # as a sweep that is running holds it
    try:
        proc = run_train("--multirun", *SMALL, "seed=1,2", f"hydra.sweep.dir={sweep}", *launcher)
    finally:
        release(sweep)
    assert "is in use by another sweep" in one_error_line(proc)
    assert [p.name for p in sweep.iterdir()] == [".lock"]  # no job ran, multirun.yaml is kept


# --- one list of the settings that cannot change training -----------------------------------

FREE = [*sorted(NOT_TRAINING_KEYS), "paths.output_dir", "logger.csv.save_dir", "hydra.job.num"]
FREE += ["callbacks.model_checkpoint.dirpath", "callbacks.run_state.dirpath"]
TRAINING = [
    "callbacks.early_stopping.patience",
    "callbacks.ema.decay",
    "callbacks.model_checkpoint.save_top_k",
    "callbacks.model_checkpoint.monitor",
    "model.optimizer.lr",
    "data.augment",
    "trainer.max_epochs",
    "init_from",
]


@pytest.mark.parametrize("key", FREE)
def test_resume_and_report_both_ignore_a_setting_that_cannot_change_training(key):
    assert not changes_training(key)
    assert config_differences({key: 1}, {key: 2}) == []
    assert grouping.ignored(f"config.{key}")


@pytest.mark.parametrize("key", TRAINING)
def test_a_resume_compares_every_setting_that_changes_training(key):
    assert changes_training(key)
    assert config_differences({key: 1}, {key: 2}) == [f"{key}: 1 -> 2"]
    assert config_differences({}, {key: 2}) == [f"{key}: '(absent)' -> 2"]  # callbacks=ema


def test_the_report_ignores_the_choice_of_a_logger_but_not_of_callbacks():
    assert grouping.ignored("choices.logger") and grouping.ignored("choices.paths")
    assert not grouping.ignored("choices.callbacks")


# --- a start removes what a killed write left ------------------------------------------------

KILLED_WRITE = """
import os, sys
from mtcsnn.run.files import write_atomic

def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    os._exit(9)  # as kill -9 during the save

write_atomic(sys.argv[1], write, binary=True)
"""


def test_a_start_removes_the_temporary_files_killed_writes_left_and_nothing_else(tmp_path, caplog):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    (run_dir / "checkpoints").mkdir(parents=True)
    outside.write_text("keep")
    for target in ("checkpoints/epoch_000.ckpt", "metrics.json"):
        subprocess.run([sys.executable, "-c", KILLED_WRITE, str(run_dir / target)], check=False)
    left = [p for p in run_dir.rglob("*.tmp")]
    assert len(left) == 2  # the project's own temporary names
    others = [run_dir / "notes.tmp", run_dir / ".notes.tmp", run_dir / ".x.ABCDEFGH.tmp"]
    others += [run_dir / "checkpoints" / "last.ckpt", run_dir / "csv" / ".m.abcdefgh.tmp"]
    for path in others:
        path.parent.mkdir(exist_ok=True)
        path.write_text("a user's file")
    link = run_dir / ".results.abcdefgh.tmp"
    link.symlink_to(outside)
    with caplog.at_level(logging.INFO):
        claim_run_dir(OmegaConf.create({"resume": False}), run_dir)
    release(run_dir)
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in others) and link.is_symlink() and outside.read_text() == "keep"
    assert "removed 2 temporary file(s)" in caplog.text
    assert all(p.name in caplog.text for p in left)


# --- a damaged last.ckpt ---------------------------------------------------------------------


def checkpoint(path, epoch: int, training_state: bool = True, cut: bool = False) -> None:
    state = {"state_dict": {"w": torch.zeros(3)}, "epoch": epoch}
    if training_state:
        state |= {"optimizer_states": [{}], "loops": {}}
    torch.save(state, path)
    if cut:  # a copy cut short
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    os.utime(path, (1000 + epoch, 1000 + epoch))


def test_a_damaged_last_ckpt_resumes_from_the_newest_whole_checkpoint(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    checkpoint(folder / "last.ckpt", 6, cut=True)
    checkpoint(folder / "epoch_001.ckpt", 1)
    checkpoint(folder / "epoch_003.ckpt", 3)
    checkpoint(folder / "epoch_005.ckpt", 5, cut=True)
    with caplog.at_level(logging.INFO):
        assert (
            resume_point(OmegaConf.create({"resume": True}), tmp_path) == folder / "epoch_003.ckpt"
        )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "last.ckpt cannot be read" in warning and "epoch_003.ckpt" in warning


def test_a_damaged_last_ckpt_beside_weights_only_checkpoints_is_one_error(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    checkpoint(folder / "last.ckpt", 6, cut=True)
    checkpoint(folder / "epoch_003.ckpt", 3, training_state=False)
    with pytest.raises(Exception, match="no optimiser state") as raised:
        resume_point(OmegaConf.create({"resume": True}), tmp_path)
    assert "\n" not in str(raised.value) and "epoch_003.ckpt" in str(raised.value)


def test_a_damaged_last_ckpt_alone_starts_from_scratch_with_a_warning(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    checkpoint(tmp_path / "checkpoints" / "last.ckpt", 6, cut=True)
    with caplog.at_level(logging.WARNING):
        assert resume_point(OmegaConf.create({"resume": True}), tmp_path) is None
    assert "starting from scratch" in caplog.text


def test_a_run_resumes_past_a_truncated_last_ckpt_without_a_traceback(tiny_cfg, tmp_path, caplog):
    from mtcsnn.run.training import train

    run = ["trainer.max_epochs=1", "keep_training_state=true"]
    train(tiny_cfg(*run, "callbacks.last_checkpoint.every_n_epochs=1"))
    (tmp_path / "metrics.json").unlink()  # as if killed after its last checkpoints
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        metrics = train(tiny_cfg(*run, "callbacks.last_checkpoint.every_n_epochs=1", "resume=true"))
    assert metrics["resumed_from"].endswith("epoch_001.ckpt")  # the first epoch's
    assert "last.ckpt cannot be read" in caplog.text and "epoch_001.ckpt" in caplog.text


# --- links planted in the run folder ----------------------------------------------------------


def run_with_record(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "outside.yaml"
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (run_dir / ".hydra" / name).write_text(f"{name}: now\n")
    outside.write_text("keep: me\n")
    return run_dir, outside


def test_a_link_planted_as_the_lock_is_refused_and_not_written_through(tmp_path):
    run_dir, outside = run_with_record(tmp_path)
    (run_dir / ".lock").symlink_to(outside)
    with pytest.raises(RunDirError, match="symbolic link"):
        hold(run_dir)
    assert outside.read_text() == "keep: me\n"


def test_a_link_planted_in_the_original_record_is_replaced_not_written_through(tmp_path):
    run_dir, outside = run_with_record(tmp_path)
    original = run_dir / ".hydra" / "original"
    original.mkdir()
    (original / "config.yaml").symlink_to(outside)
    keep_original(run_dir)
    assert outside.read_text() == "keep: me\n"
    assert not (original / "config.yaml").is_symlink()
    assert (original / "config.yaml").read_text() == "config.yaml: now\n"
    # a resume: the resume's record goes to resumed/, where a planted link is replaced too
    (run_dir / ".hydra" / "resumed").mkdir()
    (run_dir / ".hydra" / "resumed" / "overrides.yaml").symlink_to(outside)
    restore_original(run_dir)
    assert outside.read_text() == "keep: me\n"
    assert (
        run_dir / ".hydra" / "resumed" / "overrides.yaml"
    ).read_text() == "overrides.yaml: now\n"


@pytest.mark.parametrize("planted", ["folder", "source", "compared"])
def test_a_linked_record_folder_or_source_is_refused(tmp_path, planted):
    run_dir, outside = run_with_record(tmp_path)
    original = run_dir / ".hydra" / "original"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "folder":
        original.symlink_to(elsewhere)
    else:
        original.mkdir()
        (original / "config.yaml").symlink_to(outside)  # would be copied into the record
    with pytest.raises(RunDirError, match="symbolic link"):
        if planted == "compared":  # what a resume compares its settings with
            check_resume(run_dir, OmegaConf.create({"seed": 1}), in_sweep=False)
        else:
            (keep_original if planted == "folder" else restore_original)(run_dir)
    assert list(elsewhere.iterdir()) == [] and outside.read_text() == "keep: me\n"
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "config.yaml: now\n"


def test_a_job_that_failed_on_a_nearly_full_disk_says_how_much_was_free(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from mtcsnn.run import failures

    usage = namedtuple("usage", "total used free")
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 124 vs 12")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 3 * 2**20))
    failures.record_failure(tmp_path, error, announce=False)
    reason = json.loads((tmp_path / "failed.json").read_text())["error"]
    assert reason == f"{error} (the disk holding {tmp_path} has 3 MiB free)"
    # with room on the disk the reason is the error alone
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 0, 10 * 2**30))
    failures.record_failure(tmp_path, error, announce=False)
    assert json.loads((tmp_path / "failed.json").read_text())["error"] == str(error)

"""What a user sees first: ``--help`` of each command, and a missing argument."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from helpers.cli import run_module

CONF = ROOT / "conf"
HYDRA_COMMANDS = ("train", "eval", "predict", "explain", "export")


def groups_used(command: str) -> set[str]:
    """The config groups in the defaults list of the command's primary config."""
    defaults = yaml.safe_load((CONF / f"{command}.yaml").read_text())["defaults"]
    names = {next(iter(entry)) for entry in defaults if isinstance(entry, dict)}
    return {name for name in names if not name.startswith(("hydra", "override"))}


@pytest.mark.slow
@pytest.mark.parametrize("command", HYDRA_COMMANDS)
def test_help_says_what_the_command_does_and_lists_only_its_groups(command):
    result = run_module(f"mtcsnn.{command}", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"python -m mtcsnn.{command}")
    assert "MTCSNN_DATA_DIR" in text
    listed = dict(re.findall(r"^\s*(\w+): ([\w, ]+)$", text, re.M))
    assert set(listed) <= groups_used(command), listed
    for group, options in listed.items():
        on_disk = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert options.split(", ") == on_disk, group
    if command == "train":
        assert {"model", "loss", "data", "trainer", "experiment"} <= set(listed)
    else:
        assert "loss" not in listed and "model" not in listed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "args", "missing"),
    [
        ("eval", [], "ckpt_path is required"),
        ("predict", [], "ckpt_path and inputs are required"),
        ("predict", ["ckpt_path=x.ckpt"], "inputs is required"),
        ("explain", ["inputs=[a.png]"], "ckpt_path is required"),
        ("export", [], "ckpt_path is required"),
    ],
)
def test_a_missing_argument_is_one_line_with_an_example(tmp_path, command, args, missing):
    result = run_module(f"mtcsnn.{command}", *args, f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {missing}, e.g. python -m mtcsnn.{command} ckpt_path=")


# a command line as the user types it, in this process; then which heavy libraries it loaded
LOADED_BY = """
import runpy, sys
sys.argv = ["mtcsnn", *sys.argv[1:]]
try:
    runpy.run_module(sys.argv.pop(1), run_name="__main__")
except SystemExit as stop:
    if isinstance(stop.code, str):
        print(stop.code, file=sys.stderr)
print(sorted(m for m in ("torch", "pytorch_lightning", "torchvision") if m in sys.modules))
"""


@pytest.mark.parametrize("command", HYDRA_COMMANDS)
@pytest.mark.parametrize("args", [["--help"], ["no_such_key=1"], []], ids=["help", "typo", "bare"])
def test_help_and_command_line_errors_answer_without_loading_pytorch(tmp_path, command, args):
    # `train` with no arguments would train: its third case is a misspelt group option instead
    if command == "train" and not args:
        args = ["model=resnet19"]
    result = subprocess.run(
        [sys.executable, "-c", LOADED_BY, f"mtcsnn.{command}", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
    if args != ["--help"]:
        assert result.stderr.startswith("error: "), result.stderr


# records the OpenMP wait policy at the moment torch is first imported
POLICY_WHEN_TORCH_LOADS = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Spy())
import mtcsnn.train
import mtcsnn.run.training  # what a run imports: torch among it
print(seen[0])
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_while_waiting_unless_the_user_says_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    result = subprocess.run(
        [sys.executable, "-c", POLICY_WHEN_TORCH_LOADS],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout.strip() == expected


@pytest.mark.slow
def test_a_run_off_a_terminal_prints_a_plain_log(tmp_path):
    run_dir = tmp_path / "run"
    result = run_module(
        "mtcsnn.train",
        "data=synthetic",
        "data.num_train=32",
        "data.num_val=20",
        "data.num_test=20",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Tip:" not in output and "litlogger" not in output and "litmodels" not in output
    assert output.count("GPU available") == 1 and output.count("TPU available") == 1
    assert "\x1b[" not in output and "\r" not in output  # no progress-bar escape codes
    assert "Warning" not in output and "deprecated" not in output.lower()
    log = (run_dir / "train.log").read_text()
    epochs = re.findall(r"epoch (\d)/2: train/loss \d+\.\d{4} .*val/auroc \d\.\d{4}", log)
    assert epochs == ["1", "2"]  # counted from 1 of the run's 2
    assert re.search(r"\(best val/auroc \d\.\d{4} at epoch [12]\)", log)
    assert re.search(r"val  loss \d\.\d{4} acc \d\.\d{4}", log)
    assert re.search(r"test loss \d\.\d{4} acc \d\.\d{4}", log)
    assert "Test metric" not in output  # no full-precision Lightning tables


def test_the_epoch_line_names_the_best_epoch_from_before_a_resume(caplog):
    """The best epoch travels in the checkpoint: a resumed run names the one before the stop."""
    import logging
    from types import SimpleNamespace

    import torch

    from mtcsnn.run.console import EpochLog

    def epoch(callback: EpochLog, number: int, auroc: float) -> str:
        trainer = SimpleNamespace(
            is_global_zero=True,
            callback_metrics={"val/auroc": torch.tensor(auroc)},
            current_epoch=number,
            max_epochs=10,
        )
        caplog.clear()
        with caplog.at_level(logging.INFO):
            callback.on_train_epoch_end(trainer, None)
        return caplog.records[-1].getMessage()

    before = EpochLog()
    epoch(before, 0, 0.70)
    epoch(before, 1, 0.80)
    epoch(before, 2, 0.75)
    resumed = EpochLog()
    resumed.load_state_dict(before.state_dict())  # what last.ckpt carries
    assert epoch(resumed, 3, 0.78).endswith("(best val/auroc 0.8000 at epoch 2)")
    assert epoch(resumed, 4, 0.81).endswith("(best val/auroc 0.8100 at epoch 5)")
    assert epoch(resumed, 5, 0.70).startswith("epoch 6/10: ")
    assert EpochLog().state_dict() == {"best_counted_from_1": None}
    # a checkpoint of an earlier version held the best epoch counted from 0
    old = EpochLog()
    old.load_state_dict({"best": [0.80, 1]})
    assert epoch(old, 3, 0.78).endswith("(best val/auroc 0.8000 at epoch 2)")

"""Run the command-line tools in a new process, as a user would (helpers/forkserver.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from helpers import forkserver

# one epoch on a small synthetic set: for tests of sweeps and launchers, not of learning
ONE_SMALL_EPOCH = (
    "data.num_val=20",
    "data.num_test=20",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
)

# a search of one-epoch trials on a few synthetic images
TINY_SEARCH = (
    "hparams_search=resnet18_optuna",
    "data=synthetic",
    "data.num_train=40",
    "data.num_val=20",
    "data.num_test=20",
    "trainer.max_epochs=1",
)


def run_train(*args: str, env: dict | None = None, inherit: bool = True):
    """``python -m mtcsnn.train`` with ``args``; flags such as ``--multirun`` go first."""
    return run_module("mtcsnn.train", *args, env=env, inherit=inherit)


def run_module(module: str, *args: str, env: dict | None = None, inherit: bool = True):
    """``python -m <module>`` with ``args``; flags such as ``--multirun`` go first.

    With ``inherit`` the current environment (W&B offline) is the base, else only ``env``.
    """
    base = {**os.environ, "WANDB_MODE": "offline"} if inherit else {}
    flags = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    return forkserver.run(module, [*flags, *overrides], {**base, **(env or {})})


def run_with_the_reader_gone(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m <module> args | true`` in bash: the reader of its output is gone before it
    prints; the status is the command's own."""
    command = shlex.join([sys.executable, "-m", module, *args])
    return subprocess.run(
        ["bash", "-c", f"{command} | true; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
        timeout=600,
    )

"""What the console shows: no hints meant for other setups."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SLURM_CHECK = """
import warnings, sys
warnings.simplefilter("always")
if sys.argv[1] == "quiet":
    from mtcsnn.run.console import quiet_libraries
    quiet_libraries()
from lightning_fabric.plugins.environments import SLURMEnvironment
SLURMEnvironment._validate_srun_used()
"""


def fake_srun(tmp_path: Path) -> dict[str, str]:
    """An environment with an ``srun`` on PATH, as on a machine with SLURM installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):  # not inside a SLURM job
        env.pop(name, None)
    return env


def test_lightnings_srun_hint_is_not_shown_on_a_machine_with_slurm(tmp_path):
    env = fake_srun(tmp_path)

    def stderr(mode: str) -> str:
        command = [sys.executable, "-c", SLURM_CHECK, mode]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stderr

    assert "srun" in stderr("plain")  # Lightning does give the hint here
    assert "srun" not in stderr("quiet")

"""The SLURM launcher's pieces that need no cluster (tests/test_cluster.py runs it on one)."""

from __future__ import annotations

import subprocess

import pytest
from submitit.core.utils import FailedJobError

from mtcsnn.run.slurm import sbatch_refusal


def failed(command: str, stderr: str) -> FailedJobError:
    """What submitit raises when a command it runs fails: sbatch's stderr, the process as cause."""
    error = FailedJobError(stderr)
    error.__cause__ = subprocess.CalledProcessError(1, [command, "job.sh"], stderr=stderr)
    return error


def test_sbatch_s_refusal_is_said_in_one_line():
    said = sbatch_refusal(
        failed(
            "sbatch",
            "sbatch: error: Memory specification can not be satisfied\n"
            "sbatch: error: Batch job submission failed: Requested node configuration is not "
            "available",
        )
    )
    assert said is not None and "\n" not in said
    assert said.startswith(
        "Memory specification can not be satisfied; Requested node configuration is not available"
    )
    assert "hydra.launcher.mem_gb" in said


@pytest.mark.parametrize(
    "error",
    [
        FailedJobError("Traceback (most recent call last): ..."),  # a job that failed
        failed("scontrol", "scontrol: error: Invalid job id specified"),
    ],
)
def test_other_failures_are_not_taken_for_a_refusal(error):
    assert sbatch_refusal(error) is None


def test_the_launcher_is_found_by_hydra_in_an_editable_install_too():
    from hydra.core.plugins import Plugins

    from mtcsnn.run.cli import register_launchers

    register_launchers()
    names = Plugins.instance().class_name_to_class
    assert "hydra_plugins.mtcsnn_slurm_launcher.SlurmLauncher" in names

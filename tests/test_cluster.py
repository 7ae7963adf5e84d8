"""Sweeps on a real SLURM cluster: the one-node cluster `.ci/slurm_up` starts (Debian's
slurm-wlm and munge). Its own CI step runs these (`pytest -m cluster`); the suite leaves them out.

A CPU sweep as the docs type it, what sbatch refuses in one line, DDP over the two tasks of one
job with the numbers of the same run outside SLURM, and a job preempted as SLURM does it
(SIGTERM, then submitit's USR2) that is requeued and ends with an uninterrupted run's numbers.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers.cli import run_train


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout
    return bool(re.search(r"idle|mix|alloc", states))


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_up(), reason="no SLURM cluster up here: .ci/slurm_up"),
]

# a CPU job that fits the CI node, one thread per task so that runs repeat to the last digit
CPU_JOB = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
SMALL = [
    "data=synthetic",
    "data.num_train=64",
    "data.num_val=20",
    "data.num_test=20",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "threads=1",
]


def same_numbers(a: Path, b: Path) -> None:
    """Two runs with the same val and test metrics and test predictions, to the last digit."""
    first, second = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert first["val"] == second["val"] and first["test"] == second["test"]
    assert first["best_epoch_number"] == second["best_epoch_number"]
    assert (a / "test_predictions.csv").read_bytes() == (b / "test_predictions.csv").read_bytes()


def test_the_documented_cpu_sweep_runs_as_typed(tmp_path):
    """docs/cluster.md's CPU command, with only size-limiting overrides and the folder added."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines()]
    (typed,) = [c.split("#")[0] for c in commands if "hydra.launcher.gpus_per_node=0" in c]
    assert typed.startswith("python -m mtcsnn.train --multirun hydra/launcher=slurm"), typed
    # one seed: the two losses' jobs
    args = shlex.split(typed)[3:] + [*SMALL, "seed=1", f"hydra.sweep.dir={tmp_path}"]
    result = run_train(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        assert metrics["world_size"] == 1
    # without accounting, sacct's silence is said once, not at every poll
    assert output.count("sacct cannot tell job states here") <= 1
    assert "Bypassing sacct" not in output


@pytest.mark.parametrize(
    "setting, said",
    [
        ("hydra.launcher.mem_gb=100000", "Memory specification can not be satisfied"),
        ("hydra.launcher.partition=nosuch", "invalid partition specified: nosuch"),
        ("hydra.launcher.cpus_per_task=4096", "More processors requested than permitted"),
    ],
)
def test_what_sbatch_refuses_is_one_line(tmp_path, setting, said):
    result = run_train("--multirun", *CPU_JOB, setting, *SMALL, f"hydra.sweep.dir={tmp_path}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert lines[-1].startswith("error: sbatch refused the sweep's jobs: "), result.stderr
    assert said in lines[-1]
    assert not [line for line in lines if line.startswith("sbatch:")], result.stderr
    assert "Traceback" not in result.stderr


def test_ddp_over_two_slurm_tasks_is_one_run_with_the_numbers_of_devices_2(tmp_path):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *SMALL, "seed=1"]
    on_slurm = tmp_path / "slurm"
    result = run_train(
        "--multirun",
        *CPU_JOB,
        "hydra.launcher.tasks_per_node=2",
        *ddp,
        f"hydra.sweep.dir={on_slurm}",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run = on_slurm / "0"
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2
    # one run: task 1 joined task 0's dir (no lock refused) and logged to its own file
    assert sorted(p.name for p in on_slurm.iterdir() if p.is_dir()) == [".submitit", "0"]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run / "train_ddp_rank_1.log").read_text()
    alone = run_train(*ddp, f"hydra.run.dir={tmp_path / 'alone'}")
    assert alone.returncode == 0, alone.stderr[-3000:]
    same_numbers(run, tmp_path / "alone")


def test_a_preempted_job_is_requeued_and_ends_with_an_uninterrupted_run_s_numbers(tmp_path):
    longer = [*SMALL, "data.num_train=512", "data.batch_size=32", "trainer.max_epochs=6", "seed=1"]
    sweep = tmp_path / "preempted"
    log = sweep / "0" / "train.log"
    command = [sys.executable, "-m", "mtcsnn.train", "--multirun", *CPU_JOB, *longer]
    launcher = subprocess.Popen(
        [*command, f"hydra.sweep.dir={sweep}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a speed check
        while not (log.is_file() and "epoch 2/6" in log.read_text()):
            assert launcher.poll() is None and time.monotonic() < deadline, "no epoch 2"
            time.sleep(0.2)
        (job,) = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-n", "train"], capture_output=True, text=True
        ).stdout.split()
        # as SLURM preempts a job that submitit watches (submitit's own test does the same)
        subprocess.run(["scancel", job, "--signal", "SIGTERM"], check=True)
        subprocess.run(["scancel", job, "--signal", "USR2"], check=True)
        # SLURM holds a requeued job back for a while before it may start again
        while launcher.poll() is None and time.monotonic() < deadline:
            state = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True
            ).stdout
            if "PENDING BeginTime" in state:
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"])
            time.sleep(0.5)
        output = launcher.communicate(timeout=max(1, deadline - time.monotonic()))[0]
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    written = log.read_text()
    assert re.search(r"SIGTERM received: stopping at the end of epoch [2-5]\b", written)
    assert "the job is requeued and resumes its run" in written
    assert f"resuming from {sweep / '0' / 'checkpoints' / 'last.ckpt'}" in written
    submitit_logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert f"Requeued job {job}" in submitit_logs
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["resumed_from"] and metrics["epochs"] == 6
    whole = run_train(*longer, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    same_numbers(sweep / "0", tmp_path / "whole")


def test_the_documented_array_of_search_workers_runs_as_typed(tmp_path):
    """docs/cluster.md's SLURM array of search workers, as typed but for a tiny trial."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    (typed,) = [line for line in text.splitlines() if line.startswith("sbatch --array=")]
    wrapped = shlex.split(typed)
    tiny = "data=synthetic data.num_train=40 data.num_val=20 data.num_test=20"
    wrapped[-1] += f" {tiny} trainer.max_epochs=1 hparams_search.n_trials=4"
    submitted = subprocess.run(
        [*wrapped[:-2], "--parsable", "--wrap", wrapped[-1]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    array = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 600
    while subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the array did not end"
        time.sleep(1)
    outputs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert "Traceback" not in outputs, outputs[-3000:]
    import optuna

    from mtcsnn.run.search import study_storage

    journal = re.search(r"hparams_search.storage=(\S+)", typed).group(1)
    study = optuna.load_study(
        study_name="resnet18_mtcsnn", storage=study_storage(str(tmp_path / journal))
    )
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({t.number for t in complete}) == 4
    tested = [
        t.number
        for t in complete
        if json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())["test"]
    ]
    assert tested == [study.best_trial.number]

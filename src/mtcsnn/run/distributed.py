"""Lightning DDP under Hydra: child processes that join the right run, and a clean slate after.

Lightning starts ranks 1..N-1 by re-running the command line. Under a Hydra multirun that
command line would start a whole sweep in every child, in another output dir. Here each child
runs exactly its job's overrides in run mode, in the job's own output dir, writing no Hydra
files of its own; only rank 0 writes run outputs (see ``train.py``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

# what Lightning's launcher sets in the launching process; removed after each job so that the
# next job of a sweep starts its own processes
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# the signal submitit asks SLURM to send before it preempts a job or its time runs out
SLURM_WARNING = getattr(signal, "SIGUSR2", None)


def slurm_task_rank() -> int:
    """This process's rank among the tasks of its SLURM job step (0 outside SLURM)."""
    return int(os.environ.get("SLURM_PROCID") or 0)


def owns_run_dir() -> bool:
    """Whether this process owns its run's dir (holds it, cleans it, writes it): not one of the
    DDP processes that Lightning starts (``LOCAL_RANK``) nor a SLURM task other than the
    first; those join the dir of the run they belong to."""
    return "LOCAL_RANK" not in os.environ and slurm_task_rank() == 0


def cluster_environment() -> list:
    """Lightning's SLURM environment (ranks, rendezvous) without its own requeue on USR1, where
    a SLURM job step runs this process: submitit requeues a preempted job
    (:mod:`mtcsnn.run.slurm`), and two requeues would fight. Empty elsewhere."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def child_command(local_rank: int) -> tuple[Sequence[str], str]:
    """Command and working dir of DDP process ``local_rank`` for the current Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = [
        sys.executable,
        "-m",
        "mtcsnn.train",
        *hydra_cfg.overrides.task,
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
        "hydra.output_subdir=null",
        f"hydra.job.name={hydra_cfg.job.name}_ddp_rank_{local_rank}",
        "hydra.mode=RUN",
    ]
    return command, hydra_cfg.runtime.cwd


def use_job_commands_for_ddp_children() -> None:
    """Make Lightning's subprocess launcher start children with :func:`child_command`."""
    from lightning_fabric.strategies.launchers import subprocess_script as fabric_launcher
    from pytorch_lightning.strategies.launchers import subprocess_script as pl_launcher

    for module in (fabric_launcher, pl_launcher):  # the Trainer's launcher uses its own import
        module._hydra_subprocess_cmd = child_command


def end_ddp_job(launched_here: bool) -> None:
    """After a job: leave the process group; the launching process forgets its DDP env."""
    import torch  # here: the rank checks above serve code that must not load torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if launched_here:
        for name in DDP_ENV:
            os.environ.pop(name, None)

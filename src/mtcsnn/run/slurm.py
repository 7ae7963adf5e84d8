"""Sweeps on a SLURM cluster: hydra-submitit-launcher's launcher, with what a lab that shares a
cluster expects of it (``hydra/launcher=slurm``, ``conf/hydra/launcher/slurm.yaml``).

- What sbatch refuses (memory, partition, time, CPUs) ends the command with one ``error:`` line.
- On a cluster without job accounting, where ``sacct`` cannot answer, that is said once rather
  than at every poll; submitit then knows a job has ended from the result file it writes.
- DDP over the tasks of one job (``hydra.launcher.tasks_per_node=N trainer=ddp
  trainer.devices=N``): Lightning's SLURM environment gives each task its rank and the
  rendezvous; task 0 owns the run dir (:func:`mtcsnn.run.distributed.owns_run_dir`), the other
  tasks join it and log to ``<job name>_ddp_rank_N.log``.
- A job that SLURM preempts or whose time runs out is signalled first (USR2,
  ``signal_delay_s`` before); submitit then requeues it, and the requeued job resumes its run
  from ``checkpoints/last.ckpt`` (``resume=true``, :meth:`SlurmLauncher.checkpoint`).
  Lightning's own SLURM requeue is not used (it listens to USR1, which nothing here asks for).
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from mtcsnn.errors import StoppedError
from mtcsnn.run.distributed import SLURM_WARNING, slurm_task_rank

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher, see the module's description."""

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict,
    ) -> JobReturn:
        rank = slurm_task_rank()
        if rank:  # another task of a DDP job: the same run dir, its own log, no Hydra files
            assert self.config is not None
            name = self.config.hydra.job.name
            sweep_overrides = [
                *sweep_overrides,
                "hydra.output_subdir=null",
                f"hydra.job.name={name}_ddp_rank_{rank}",
            ]
        # submitit's handler of SLURM's warning checkpoints, requeues and exits at once, in the
        # middle of whatever runs (a checkpoint being written): here the warning (or SIGTERM,
        # which preemption sends) only asks the run to stop at its epoch end (RunState); the
        # job is requeued once the run has stopped there
        requeue = signal.getsignal(SLURM_WARNING)
        signal.signal(SLURM_WARNING, _noted)
        try:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        except SystemExit as stop:  # the command's one line for a run that was stopped
            if not (isinstance(stop.__context__, StoppedError) and callable(requeue)):
                raise
            log.info("%s: the job is requeued and resumes its run", stop.__context__)
            signal.signal(SLURM_WARNING, requeue)
            requeue(SLURM_WARNING, None)  # submitit's: checkpoint (resume=true), requeue, exit
            raise  # another task than the first: the first requeues the job
        finally:
            signal.signal(SLURM_WARNING, requeue)

    def checkpoint(self, sweep_overrides: list[str], *args: Any) -> Any:
        """What submitit requeues when the job is preempted or timed out: the same job, its run
        resumed from its last checkpoint."""
        from submitit.helpers import DelayedSubmission

        resumed = [o for o in sweep_overrides if not o.lstrip("+~").startswith("resume=")]
        return DelayedSubmission(self, [*resumed, "resume=true"], *args)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError
        from submitit.slurm import slurm

        sbatch_said = _HeldBack()
        try:
            with _sacct_said_once(slurm), contextlib.redirect_stderr(sbatch_said):
                return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as error:
            refusal = sbatch_refusal(error)
            if refusal is None:
                sbatch_said.release()
                raise
            raise SystemExit(f"error: sbatch refused the sweep's jobs: {refusal}") from None
        finally:
            sbatch_said.close()


def _noted(signum: int, frame: Any) -> None:
    """SLURM's warning outside training (RunState takes it during training): the job goes on."""
    log.info(
        "SLURM's warning (%s) came outside training: the job goes on", signal.Signals(signum).name
    )


def sbatch_refusal(error: BaseException) -> str | None:
    """What sbatch said when it refused a submission (submitit's ``FailedJobError`` holds its
    stderr), in one line; None for a failure of another kind (a job that failed)."""
    cause = error.__cause__
    if not isinstance(cause, subprocess.CalledProcessError) or "sbatch" not in str(cause.cmd[0]):
        return None
    lines = [line.removeprefix("sbatch: error:").strip() for line in str(error).splitlines()]
    reasons = [line.removeprefix("Batch job submission failed:").strip() for line in lines if line]
    settings = "hydra.launcher.mem_gb, cpus_per_task, gpus_per_node, partition, timeout_min"
    return f"{'; '.join(reasons) or 'no reason given'} (see {settings})"


class _HeldBack(io.TextIOBase):
    """stderr while the launcher submits and waits: passed on at once, except sbatch's own
    lines, which :func:`sbatch_refusal` says again in one line (or ``release()`` passes on)."""

    def __init__(self) -> None:
        self.stream = sys.stderr
        self.held: list[str] = []

    def write(self, text: str) -> int:
        ends_held = text == "\n" and self.held and not self.held[-1].endswith("\n")
        if text.startswith("sbatch: ") or ends_held:  # print() writes its newline apart
            self.held.append(text)
        else:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def release(self) -> None:
        self.stream.write("".join(self.held))
        self.held.clear()


@contextlib.contextmanager
def _sacct_said_once(slurm: Any) -> Iterator[None]:
    """submitit's job watcher for this launch, asking sacct only where it can answer."""

    class Watcher(slurm.SlurmInfoWatcher):
        unavailable: str | None = None
        asked = False

        def _make_command(self) -> list[str] | None:
            if not Watcher.asked:
                Watcher.asked = True
                probe = subprocess.run(
                    ["sacct", "--parsable2", "--noheader", "-j", "1"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if probe.returncode:
                    Watcher.unavailable = " ".join(probe.stderr.split()) or "no answer"
                    log.warning(
                        "sacct cannot tell job states here (%s): a job counts as ended when it "
                        "has written its result",
                        Watcher.unavailable,
                    )
            return None if Watcher.unavailable else super()._make_command()

    kept = slurm.SlurmJob.watcher
    slurm.SlurmJob.watcher = Watcher(delay_s=kept._delay_s)
    try:
        yield
    finally:
        slurm.SlurmJob.watcher = kept

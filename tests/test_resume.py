"""A killed run resumes in its own dir with the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import run_train

pytestmark = pytest.mark.slow

RUN = [
    "data=synthetic",
    "data.num_train=80",  # 5 training batches: the mid-training signals land at batch 3
    "data.num_val=40",
    "data.num_test=40",
    "data.batch_size=16",
    "data.eval_batch_size=16",  # several val batches, so a signal can land inside validation
    "trainer=cpu",
    "trainer.max_epochs=5",  # stopped after epoch 2, resumed for 2 more
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
    "callbacks.last_checkpoint.every_n_epochs=1",
    "seed=3",
]
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_train(*RUN, f"hydra.run.dir={out}", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics, "val_predictions.csv": (out / "val_predictions.csv").read_text()}


def start_and_kill(run_dir: Path, signum: int, after_epoch: int) -> tuple[int, str]:
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtcsnn.train", *RUN, f"hydra.run.dir={run_dir}"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WANDB_MODE": "offline", **ENV},
        )
        # wait until last.ckpt has been written after_epoch + 1 times (each epoch rewrites it)
        last, seen = run_dir / "checkpoints" / "last.ckpt", set()
        deadline = time.time() + 300
        while len(seen) <= after_epoch and proc.poll() is None and time.time() < deadline:
            if last.exists():
                seen.add(last.stat().st_mtime_ns)
            time.sleep(0.02)
        proc.send_signal(signum)
        code = proc.wait(timeout=300)
    return code, log.read_text()


def resume_and_compare(
    run_dir: Path, uninterrupted: dict, *same: str, env: dict | None = None
) -> str:
    """Resume with the command that started the run (``same``: its extra overrides)."""
    resumed = run_train(*RUN, *same, f"hydra.run.dir={run_dir}", "resume=true", env=env or ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("last.ckpt")
    assert metrics["test"] == uninterrupted["test"]
    assert metrics["val"] == uninterrupted["val"]
    assert metrics["best_epoch_number"] == uninterrupted["best_epoch_number"]
    # every epoch's val predictions, those from before the kill included
    assert (run_dir / "val_predictions.csv").read_text() == uninterrupted["val_predictions.csv"]
    # one best checkpoint: none from before the resume stays beside it
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    assert str(best) == metrics["best_checkpoint"]
    return resumed.stdout + resumed.stderr


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_numbers(tmp_path, uninterrupted, signum):
    run_dir = tmp_path / "run"
    code, output = start_and_kill(run_dir, signum, after_epoch=2)
    assert code != 0
    assert not (run_dir / "metrics.json").exists()
    if signum == signal.SIGTERM:
        assert "stopped by SIGTERM after epoch" in output and "resume=true" in output
        assert "Traceback" not in output
    resume_and_compare(run_dir, uninterrupted)


@pytest.mark.parametrize(
    "point",
    [("3", "false", "SIGTERM"), ("1", "true", "SIGTERM"), ("3", "false", "SIGINT")],
    ids=["mid-training", "mid-validation", "ctrl-c-mid-training"],
)
def test_sigterm_inside_an_epoch_stops_at_its_end(tmp_path, uninterrupted, point):
    # the signal lands at a known batch of epoch 2; the run must still stop after that epoch,
    # since resuming from the middle of an epoch would pair and augment other images.
    # Ctrl-C (SIGINT) stops the same way: last.ckpt at the epoch end, one line to resume.
    batch, val, signal_name = point
    run_dir = tmp_path / "run"
    # callbacks change training, so a resume must name the same ones (this one fires in epoch 2)
    interrupt = (
        "+callbacks.interrupt._target_=helpers.interrupt.SigtermAt",
        "+callbacks.interrupt.epoch=2",
        f"+callbacks.interrupt.batch={batch}",
        f"+callbacks.interrupt.val={val}",
        f"+callbacks.interrupt.signal_name={signal_name}",
    )
    env = {**ENV, "PYTHONPATH": str(Path(__file__).parent)}
    stopped = run_train(*RUN, f"hydra.run.dir={run_dir}", *interrupt, env=env)
    assert stopped.returncode != 0
    # Lightning's epoch 2 is the third: counted from 1, as the epoch lines count
    named = "SIGINT (Ctrl-C)" if signal_name == "SIGINT" else signal_name
    assert f"stopped by {named} after epoch 3" in stopped.stderr, stopped.stderr[-2000:]
    output = stopped.stdout + stopped.stderr
    assert f"{named} received: stopping at the end of epoch 3" in output
    if signal_name == "SIGINT":  # no line calls a Ctrl-C a SIGTERM
        assert "SIGTERM" not in output
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert "Traceback" not in stopped.stdout + stopped.stderr
    assert not (run_dir / "metrics.json").exists()
    resume_and_compare(run_dir, uninterrupted, *interrupt, env=env)


def as_left_by_the_earlier_version(run_dir: Path) -> None:
    """The EpochLog state in last.ckpt as earlier versions wrote it: the best epoch counted
    from 0 under "best" (the run itself used Lightning's own checkpoint callback)."""
    import torch

    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    kept = state["callbacks"]["EpochLog"].pop("best_counted_from_1")
    state["callbacks"]["EpochLog"]["best"] = [kept[0], kept[1] - 1]
    torch.save(state, last)


def test_a_run_folder_of_the_earlier_version_resumes_to_the_same_numbers(tmp_path, uninterrupted):
    """Checkpoint names counted from 0 (``epoch_000.ckpt``: the first epoch), as earlier versions
    wrote them, resume with the current callbacks to an uninterrupted run's numbers."""
    run_dir = tmp_path / "run"
    interrupt = (
        "+callbacks.interrupt._target_=helpers.interrupt.SigtermAt",
        "+callbacks.interrupt.epoch=2",
        "+callbacks.interrupt.batch=3",
    )
    earlier = "callbacks.model_checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint"
    env = {**ENV, "PYTHONPATH": str(Path(__file__).parent)}
    stopped = run_train(*RUN, f"hydra.run.dir={run_dir}", *interrupt, earlier, env=env)
    assert "stopped by SIGTERM after epoch 3" in stopped.stderr, stopped.stderr[-2000:]
    import torch

    (old,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    assert old.name == f"epoch_{torch.load(old, weights_only=True)['epoch']:03d}.ckpt"
    as_left_by_the_earlier_version(run_dir)
    output = resume_and_compare(run_dir, uninterrupted, *interrupt, env=env)
    best = uninterrupted["best_epoch_number"]
    assert re.search(rf"epoch 5/5: .*\(best val/auroc \d\.\d{{4}} at epoch {best}\)", output)
    assert "epoch 4/5: " in output and "epoch 3/5: " not in output


def test_resuming_a_finished_run_keeps_it(tmp_path):
    first = run_train(*RUN[:-4], "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}", env=ENV)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (tmp_path / "metrics.json").read_text()
    again = run_train(
        *RUN[:-4], "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}", "resume=true", env=ENV
    )
    assert again.returncode == 0
    assert "already finished" in again.stdout + again.stderr
    assert (tmp_path / "metrics.json").read_text() == before

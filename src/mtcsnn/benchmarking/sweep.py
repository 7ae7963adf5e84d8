"""Whole runs timed (``python -m mtcsnn.bench --runs N --jobs J``): N seeds as a framework sweep
against N runs of the bare loop of :mod:`mtcsnn.benchmarking.loops`, J at a time, side by side."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate

from mtcsnn.benchmarking.loops import bare_run, compose_config, cpu_name, device_of
from mtcsnn.errors import MTCSNNError
from mtcsnn.run.training import set_threads


def _auroc_summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +/- {spread:.4f}"


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1]


def run_at_most(commands: list[list[str]], jobs: int) -> None:
    """Run ``commands``, ``jobs`` at a time; any failure is an error naming its last line."""
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            command = pending.pop(0)
            running.append(
                (
                    command,
                    subprocess.Popen(
                        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                    ),
                )
            )
        command, process = running.pop(0)
        _, err = process.communicate()
        if process.returncode != 0:
            raise MTCSNNError(f"a bare run failed ({' '.join(command[3:])}): {_last_line(err)}")


def sweep_benchmark(overrides: list[str], runs: int, jobs: int, epochs: int | None) -> dict:
    """N seeds as a framework sweep and as N plain-loop runs, each J at a time: wall times."""
    if any(o.split("=", 1)[0].lstrip("+~") in ("seed", "threads") for o in overrides):
        raise MTCSNNError("bench --runs sets seed (1..N) and threads (cores / jobs) itself")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(overrides, Path(tmp))  # checked here, before anything starts
        epochs = epochs or int(cfg.trainer.max_epochs)
        seeds = list(range(1, runs + 1))
        threads = max(1, (os.cpu_count() or 1) // jobs)  # the parallel launcher's share
        sweep_dir = Path(tmp) / "framework"
        start = time.perf_counter()
        framework = subprocess.run(
            [
                sys.executable, "-m", "mtcsnn.train", "--multirun",
                f"seed={','.join(map(str, seeds))}", "hydra/launcher=parallel",
                f"hydra.launcher.n_jobs={jobs}", f"trainer.max_epochs={epochs}",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}", *overrides,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        framework_s = time.perf_counter() - start
        if framework.returncode != 0:
            raise MTCSNNError(f"the framework sweep failed: {_last_line(framework.stderr)}")
        metrics = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
        start = time.perf_counter()
        outs = [Path(tmp) / f"bare_{seed}.json" for seed in seeds]
        run_at_most(
            [
                [sys.executable, "-m", "mtcsnn.bench", "--bare-run", str(out), "--epochs",
                 str(epochs), f"seed={seed}", f"threads={threads}", *overrides]
                for seed, out in zip(seeds, outs, strict=True)
            ],
            jobs,
        )  # fmt: skip
        bare_s = time.perf_counter() - start
        bare = [json.loads(out.read_text()) for out in outs]
    device = device_of(cfg)
    return {
        "overrides": overrides,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "runs": runs,
        "jobs": jobs,
        "threads_per_job": threads,
        "epochs": epochs,
        "framework": {
            "wall_s": framework_s,
            "s_per_run": framework_s / runs,
            "val_auroc": [m["val"]["auroc"] for m in metrics],
            "test_auroc": [m["test"]["auroc"] for m in metrics],
        },
        "bare": {
            "wall_s": bare_s,
            "s_per_run": bare_s / runs,
            "val_auroc": [b["val_auroc"] for b in bare],
            "test_auroc": [b["test_auroc"] for b in bare],
        },
        "ratio": framework_s / bare_s,
    }


def sweep_summary(r: dict) -> str:
    lines = [
        f"device: {r['device']}; {r['runs']} runs of {r['epochs']} epochs, {r['jobs']} at a time "
        f"({r['threads_per_job']} threads each)",
    ]
    for name, label in (("framework", "mtcsnn.train --multirun"), ("bare", "bare PyTorch runs")):
        part = r[name]
        lines.append(
            f"  {label:24s}: {part['wall_s']:8.1f} s wall, {part['s_per_run']:7.1f} s a run; "
            f"val AUROC {_auroc_summary(part['val_auroc'])}, "
            f"test AUROC {_auroc_summary(part['test_auroc'])}"
        )
    lines.append(f"  cost of a run, framework/bare: {r['ratio']:.2f}x")
    return "\n".join(lines)


def bare_run_job(overrides: list[str], epochs: int, out: Path) -> None:
    """One plain-loop run of a sweep benchmark, in its own process (``--bare-run``)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(overrides, Path(tmp))
        set_threads(cfg)
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        out.write_text(json.dumps(bare_run(cfg, datamodule, epochs)) + "\n")


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes that spin on a core each until the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()

"""``python -m mtcsnn.bench [--steps N] [overrides ...]``: framework overhead, measured.

On the model, data and batch size of the composed train config (any ``key=value`` overrides
apply), it times (a) a bare PyTorch training loop (``benchmarking/loops.py``) and (b) the
framework's real training step run by a Lightning ``Trainer``, and prints images/s of each, their
ratio, the share of step time spent fetching data, and the achieved FLOP rate of the training
step against a matmul peak measured in the same run. A benchmark, not a test: numbers depend on
the machine.

``--runs N --jobs J`` times whole runs instead: a sweep of N seeds through ``python -m
mtcsnn.train --multirun`` (J jobs at a time, the parallel launcher) against N runs of a plain
PyTorch loop (J processes at a time, splits on the device, val every epoch, the best-val weights
tested), side by side: wall time, seconds per run and the val/test AUROC of both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtcsnn.errors import MTCSNNError
from mtcsnn.run.stdout import quiet_on_closed_pipe


def main(argv: list[str] | None = None) -> int:
    return quiet_on_closed_pipe(lambda: bench(argv))


def bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="mtcsnn-bench", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. model=resnet50")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--runs",
        type=int,
        default=0,
        help="time whole runs instead: N seeds as a framework sweep and as N bare-loop runs",
    )
    parser.add_argument("--jobs", type=int, default=1, help="with --runs: runs at a time")
    parser.add_argument(
        "--epochs", type=int, help="with --runs: epochs a run (default: trainer.max_epochs)"
    )
    parser.add_argument("--bare-run", type=Path, help=argparse.SUPPRESS)  # one bare job's output
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="CPU-bound processes kept running meanwhile: a machine shared with other work",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.busy < 0:
        parser.error("--steps and --warmup must be >= 1, --busy >= 0")
    if args.runs < 0 or args.jobs < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--runs must be >= 0, --jobs and --epochs >= 1")
    # PyTorch and Lightning load once the arguments are good: --help answers at once
    from mtcsnn.benchmarking.loops import benchmark, summary
    from mtcsnn.benchmarking.sweep import (
        bare_run_job,
        busy_processes,
        sweep_benchmark,
        sweep_summary,
    )
    from mtcsnn.run.console import quiet_libraries

    quiet_libraries()  # as in a run: no advertising tips, no hints meant for other setups
    try:
        if args.bare_run:
            bare_run_job(args.overrides, args.epochs or 1, args.bare_run)
            return 0
        with busy_processes(args.busy):
            if args.runs:
                result = sweep_benchmark(args.overrides, args.runs, args.jobs, args.epochs)
            else:
                result = benchmark(args.overrides, args.steps, args.warmup)
    except MTCSNNError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result["busy_processes"] = args.busy
    print(sweep_summary(result) if args.runs else summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

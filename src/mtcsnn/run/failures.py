"""Failure-isolated sweeps: a failing job is recorded in its own dir and the sweep goes on.

:func:`recorded` writes ``failed.json`` (the reason) into the dir of a job that fails;
:class:`FailureSummary`, a Hydra callback, lists the failed jobs when the sweep ends and makes
it exit non-zero.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtcsnn.errors import MTCSNNError, StoppedError
from mtcsnn.run.files import write_json
from mtcsnn.run.run_dir import RunDirError

log = logging.getLogger(__name__)
FAILED = "failed.json"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def recorded(run: Callable[[DictConfig], dict], cfg: DictConfig) -> dict | None:
    """``run(cfg)``; when it fails, its dir says why (``failed.json``, listed by the report).

    In a sweep the failure is recorded and the other jobs still run (None is returned); a single
    run records an error of ours and lets it end the command. A stop (SIGTERM, Ctrl-C) and a dir
    held by another run are not failures of this run: nothing is recorded.
    """
    try:
        return run(cfg)
    except (StoppedError, RunDirError):
        raise
    except Exception as err:
        out_dir = Path(cfg.paths.output_dir)
        if not in_multirun():
            if isinstance(err, MTCSNNError):
                record_failure(out_dir, err, announce=False)  # the command prints it
            raise
        record_failure(out_dir, err)
        return None


def record_failure(out_dir: Path, error: BaseException, announce: bool = True) -> None:
    """``failed.json`` in the job's dir: the error, and a traceback for unexpected ones.

    ``announce=False`` where the caller prints the error itself (a single run's one line).
    """
    record: dict[str, Any] = {
        "error": str(error) or type(error).__name__,
        "type": type(error).__name__,
    }
    if not isinstance(error, MTCSNNError):
        record["traceback"] = traceback.format_exception(error)
    try:
        write_json(out_dir / FAILED, record)
    except OSError:  # a full disk: the error itself still reaches the user
        pass
    if announce:
        log.error("job failed: %s (recorded in %s)", record["error"], out_dir / FAILED)


def clear_failure(out_dir: Path) -> None:
    """A job run again (e.g. resumed) starts without the failure of an earlier attempt."""
    (out_dir / FAILED).unlink(missing_ok=True)


def failure_reason(path: Path) -> str:
    """The reason a ``failed.json`` records; a damaged one says so instead of failing too."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # nesting too deep: RecursionError
        recorded = None
    if not isinstance(recorded, dict):
        return "unreadable failed.json"
    return str(recorded.get("error", "no reason recorded"))


def read_failures(sweep_dir: Path) -> list[tuple[Path, str]]:
    return [(path.parent, failure_reason(path)) for path in sorted(sweep_dir.glob(f"*/{FAILED}"))]


class FailureSummary(Callback):
    """At the end of a multirun: one line per failed job, and a non-zero exit if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = read_failures(sweep_dir)
        if not failures:
            return
        jobs = sum(1 for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").exists())
        lines = [f"{len(failures)} of {jobs} sweep jobs failed:"]
        for job_dir, reason in failures:
            lines.append(f"  {job_dir}: {reason}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(1)

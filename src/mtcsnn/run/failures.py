"""Failure-isolated sweeps: a failing job is recorded in its own dir and the sweep goes on.

:func:`recorded` writes ``failed.json`` (the reason) into the dir of a job that fails, a config
error found while the job is built included; :class:`FailureSummary`, a Hydra callback, lists
the failed jobs when the sweep ends and makes it exit non-zero; :class:`SweepHold` holds the
sweep folder while the sweep writes it, so a second sweep into it is refused.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtcsnn.errors import ConfigError, MTCSNNError, StoppedError, WriteError
from mtcsnn.run.distributed import owns_run_dir
from mtcsnn.run.files import write_json
from mtcsnn.run.run_dir import RunDirError, hold, release
from mtcsnn.writing import failed_write

log = logging.getLogger(__name__)
FAILED = "failed.json"
# below this much free space a failed job's reason says so: the likely cause of an error
# that does not name it
LOW_DISK_BYTES = 512 * 2**20


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class BuildError(MTCSNNError):
    """An object the config describes could not be built from it (its ``_target_`` refused
    the values given); the library's own error is kept as the cause."""


def our_error(error: BaseException) -> BaseException:
    """The error to report for ``error``: ours where Hydra's instantiate wrapped one of ours,
    a :class:`BuildError` (one line) where it wrapped another's, a :class:`WriteError` for a
    write the disk refused (a library's own writer, a log: not only our files), else ``error``
    itself."""
    refused = failed_write(error)
    if refused is not None and not isinstance(error, MTCSNNError):
        where = f" {refused.filename}" if refused.filename else ""
        return WriteError(f"cannot write{where}: {refused.strerror or refused}")
    if not isinstance(error, InstantiationException):
        return error
    text = str(error)
    key = re.search(r"full_key: (\S+)", text)
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, ConfigError) and key and not cause.key.startswith(key.group(1) + "."):
            # the class names its argument (val_fraction); users wrote data.val_fraction
            return ConfigError(f"{key.group(1)}.{cause.key}", cause.value, cause.allowed)
        if isinstance(cause, MTCSNNError):
            return cause
        if not isinstance(cause, InstantiationException):
            break
        cause = cause.__cause__
    target = re.search(r"'([^']+)'", text)
    what = key.group(1) if key else "an object of the config"
    if target:
        what += f" ({target.group(1)})"
    reason = f"{type(cause).__name__}: {cause}" if cause is not None else text
    built = BuildError(f"config error: cannot build {what}: {' '.join(reason.split())}")
    built.__cause__ = cause if cause is not None else error
    return built


def recorded(run: Callable[[DictConfig], dict], cfg: DictConfig) -> dict | None:
    """``run(cfg)``; when it fails, its dir says why (``failed.json``, listed by the report).

    The dir is held (:func:`~mtcsnn.run.run_dir.hold`) from before the config is checked until
    the failure is recorded, so nothing is written into a dir another run holds. In a sweep the
    failure is recorded and the other jobs still run (None is returned); a single run records
    an error of ours (a config error found while its objects are built included) and lets it
    end the command with one line. A stop (SIGTERM, Ctrl-C) and a dir held by another run are
    not failures of this run: nothing is recorded.
    """
    out_dir = Path(cfg.paths.output_dir)
    launcher = owns_run_dir()  # DDP's other processes (or SLURM tasks) work in the same dir
    if launcher:
        hold(out_dir)
    try:
        return run(cfg)
    except (StoppedError, RunDirError):
        raise
    except Exception as raised:
        err = our_error(raised)
        if not in_multirun():
            if isinstance(err, MTCSNNError):
                record_failure(out_dir, err, announce=False)  # the command prints it
                raise err from None
            raise
        record_failure(out_dir, err)
        return None
    finally:
        if launcher:
            release(out_dir)


def record_failure(out_dir: Path, error: BaseException, announce: bool = True) -> None:
    """``failed.json`` in the job's dir: the error, and a traceback for unexpected ones.

    ``announce=False`` where the caller prints the error itself (a single run's one line).
    """
    record: dict[str, Any] = {
        "error": (str(error) or type(error).__name__) + low_disk_note(out_dir),
        "type": type(error).__name__,
    }
    if isinstance(error, BuildError) and error.__cause__ is not None:
        record["traceback"] = traceback.format_exception(error.__cause__)
    elif not isinstance(error, MTCSNNError):
        record["traceback"] = traceback.format_exception(error)
    try:
        write_json(out_dir / FAILED, record)
    except OSError:  # a full disk: the error itself still reaches the user
        pass
    if announce:
        log.error("job failed: %s (recorded in %s)", record["error"], out_dir / FAILED)


def low_disk_note(out_dir: Path) -> str:
    """`` (the disk holding <dir> has N MiB free)`` where it has under :data:`LOW_DISK_BYTES`:
    a failure's likely cause, which the libraries' own errors do not name; else ``""``."""
    try:
        free = shutil.disk_usage(out_dir).free
    except OSError:
        return ""
    if free >= LOW_DISK_BYTES:
        return ""
    return f" (the disk holding {out_dir} has {free // 2**20} MiB free)"


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


class SweepHold(Callback):
    """Holds the sweep folder from the start of a multirun to its end: a second sweep started
    into the same folder meanwhile is refused with one line before it runs any job (it would
    run every job again and overwrite the first one's files). ``flock`` dies with the process,
    so a sweep that ended or was killed leaves no stale hold, and ``resume=true`` works."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            hold(sweep_dir, what="sweep")
        except RunDirError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        except OSError as err:
            print(f"error: cannot create {sweep_dir}: {err.strerror or err}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(config.hydra.sweep.dir))

"""One run per output dir: a lock while it runs, and a resume that continues the same run.

Hydra writes ``.hydra/config.yaml`` and ``overrides.yaml`` into the output dir before the task
starts, so a resume with other overrides would silently replace the record of the run. The
first start therefore keeps a copy in ``.hydra/original/``; a resume compares its config with
the one the run started with and, whatever it decides, puts the original files back.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import MTCSNNError
from mtcsnn.run.config import flatten

LOCK = ".lock"
ORIGINAL = Path(".hydra") / "original"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
# settings that cannot change a run's numbers: a resume may differ in them
FREE_TO_CHANGE = ("logger.", "paths.", "hydra.", "callbacks.", "trainer.enable_progress_bar")
FREE_KEYS = {"resume", "threads", "keep_training_state", "data.root", "data.num_workers"}

_held: dict[Path, int] = {}  # lock files this process holds, by run dir


class RunDirError(MTCSNNError):
    """The output dir belongs to another run, or holds nothing to resume."""


def hold(out_dir: Path) -> None:
    """Hold ``out_dir`` for this process: a second run there is refused with one line.

    ``flock`` dies with the process, so a killed run leaves no stale lock behind.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir in _held:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(
            f"{out_dir} is in use by another run (pid {owner}); wait for it to end, or give this "
            "run its own folder (hydra.run.dir=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[out_dir] = fd


def release(out_dir: Path) -> None:
    """Let ``out_dir`` go (the next job of a sweep in this process takes its own dir)."""
    fd = _held.pop(Path(out_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def started_before(out_dir: Path) -> bool:
    """Whether a run started in ``out_dir`` earlier (its original config was kept)."""
    return (Path(out_dir) / ORIGINAL / "config.yaml").exists()


def keep_original(out_dir: Path) -> None:
    """A new start: keep Hydra's record of this run where a resume cannot overwrite it."""
    hydra_dir, original = Path(out_dir) / ".hydra", Path(out_dir) / ORIGINAL
    if not hydra_dir.exists():
        return
    original.mkdir(parents=True, exist_ok=True)
    for name in HYDRA_FILES:
        if (hydra_dir / name).exists():
            shutil.copy2(hydra_dir / name, original / name)


def restore_original(out_dir: Path) -> None:
    """Put the run's original ``.hydra`` files back; the resume's go to ``.hydra/resumed/``."""
    hydra_dir, original = Path(out_dir) / ".hydra", Path(out_dir) / ORIGINAL
    if not original.exists():
        return
    resumed = hydra_dir / "resumed"
    resumed.mkdir(exist_ok=True)
    for name in HYDRA_FILES:
        if (hydra_dir / name).exists():
            shutil.copy2(hydra_dir / name, resumed / name)
        if (original / name).exists():
            shutil.copy2(original / name, hydra_dir / name)


def _free(key: str) -> bool:
    return key in FREE_KEYS or key.startswith(FREE_TO_CHANGE)


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> now`` for each setting that differs and could change the numbers."""
    before, after = flatten(saved), flatten(current)
    keys = sorted(k for k in set(before) | set(after) if not _free(k))
    return [
        f"{k}: {before.get(k, '(absent)')!r} -> {after.get(k, '(absent)')!r}"
        for k in keys
        if before.get(k) != after.get(k)
    ]


def check_resume(out_dir: Path, cfg: DictConfig, in_sweep: bool) -> None:
    """Refuse a resume that would mix two configurations or start a run nobody started."""
    out_dir = Path(out_dir)
    original = out_dir / ORIGINAL / "config.yaml"
    if not original.exists():
        if in_sweep or (out_dir / "checkpoints" / "last.ckpt").exists():
            # a job of a resumed sweep that never started starts now; a run from before
            # original configs were kept goes on from its last.ckpt
            return
        raise RunDirError(
            f"resume=true but nothing was started in {out_dir} (no checkpoints/last.ckpt, no "
            "earlier run): check the path, or leave out resume=true to start a new run"
        )
    saved = OmegaConf.to_container(OmegaConf.load(original), resolve=False)
    current = OmegaConf.to_container(cfg, resolve=False)
    differences = config_differences(saved, current)
    if differences:
        restore_original(out_dir)
        raise RunDirError(
            f"resume=true with other settings than the run in {out_dir} started with: "
            + "; ".join(differences)
            + ". Resume with the same overrides (see .hydra/overrides.yaml there)"
        )

"""One run per output dir: a lock while it runs, and a resume that continues the same run.

Hydra writes ``.hydra/config.yaml`` and ``overrides.yaml`` into the output dir before the task
starts, so a resume with other overrides would silently replace the record of the run. The
first start therefore keeps a copy in ``.hydra/original/``; a resume compares its config with
the one the run started with and, whatever it decides, puts the original files back.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import MTCSNNError
from mtcsnn.run.config import changes_training, current_names, flatten

log = logging.getLogger(__name__)

LOCK = ".lock"
ORIGINAL = Path(".hydra") / "original"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
# what a write that never finished leaves beside its file: mtcsnn.run.files.write_atomic's
# temporary ``.<name>.<8 random characters>.tmp`` (tempfile.mkstemp's), and this module's own
LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
# the folders of a run that such writes go to
WRITTEN_FOLDERS = (".", "checkpoints", ".hydra", str(ORIGINAL), ".hydra/resumed")

_held: dict[Path, list[int]] = {}  # lock file and depth of each dir this process holds


class RunDirError(MTCSNNError):
    """The output dir belongs to another run, or holds nothing to resume."""


class ResumeError(MTCSNNError):
    """The run cannot go on from what its dir holds (a failure of this run: it is recorded)."""


def hold(out_dir: Path, what: str = "run") -> None:
    """Hold ``out_dir`` for this process: a second run (or sweep) there is refused with one line.

    ``flock`` dies with the process, so a killed run leaves no stale lock behind. Holding a dir
    this process already holds nests: it is let go by as many :func:`release`.
    ``what`` names the holder in the message: ``"run"`` or ``"sweep"``.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir in _held:
        _held[out_dir][1] += 1
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / LOCK
    try:
        # never through a link planted there, and never blocking on a FIFO
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunDirError(
                f"{lock} is a symbolic link; a run never writes through one: remove it"
            ) from None
        raise RunDirError(f"cannot create {lock}: {err.strerror or err}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{lock} is not a regular file: remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        option = "hydra.sweep.dir" if what == "sweep" else "hydra.run.dir"
        raise RunDirError(
            f"{out_dir} is in use by another {what} (pid {owner}); wait for it to end, or give "
            f"this {what} its own folder ({option}=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[out_dir] = [fd, 1]


def release(out_dir: Path) -> None:
    """Let ``out_dir`` go (the next job of a sweep in this process takes its own dir)."""
    out_dir = Path(out_dir).resolve()
    held = _held.get(out_dir)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _held[out_dir]
        os.close(held[0])


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Remove the temporary files that writes cut short (a kill) left in ``out_dir``.

    Only regular files named as this project names its temporary files, in the folders a run
    writes to; a run holds the dir (:func:`hold`) first, so none is being written now.
    """
    removed = []
    for folder in WRITTEN_FOLDERS:
        where = Path(out_dir) / folder
        if where.is_symlink() or not where.is_dir():
            continue
        with os.scandir(where) as entries:
            leftovers = [
                Path(entry.path)
                for entry in entries
                if LEFTOVER.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            ]
        for path in leftovers:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        names = ", ".join(str(p.relative_to(out_dir)) for p in sorted(removed))
        log.info("removed %d temporary file(s) an interrupted write left: %s", len(removed), names)
    return removed


def started_before(out_dir: Path) -> bool:
    """Whether a run started in ``out_dir`` earlier (its original config was kept)."""
    return (Path(out_dir) / ORIGINAL / "config.yaml").exists()


def _open_dir(parent: int, name: str, path: Path, create: bool = False) -> int:
    """A folder of the run's ``.hydra`` record (``path``), opened without following a link."""
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RunDirError(
                f"{path} is a symbolic link or not a folder; a run keeps its record in its own "
                "folder only: remove it"
            ) from None
        raise


def _read(folder: int, name: str, where: Path) -> tuple[bytes, os.stat_result] | None:
    """A file of the run's record, never through a link; None when there is none."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunDirError(
                f"{where / name} is a symbolic link; a run reads its record only from its own "
                "folder: remove it"
            ) from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO would hang the read
            raise RunDirError(f"{where / name} is not a regular file: remove it")
        return f.read(), os.fstat(f.fileno())


def _copy(src_dir: int, dst_dir: int, name: str, where: Path) -> bool:
    """``name`` from one folder to the other, as a new file renamed over the old one.

    A link planted at either end is never followed: it is refused as the source and replaced
    (not written through) as the target. False when there is no such source file.
    """
    read = _read(src_dir, name, where)
    if read is None:
        return False
    data, times = read
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"  # LEFTOVER's pattern: a kill leaves no stray
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dst_dir)
    try:
        with os.fdopen(out, "wb") as f:
            f.write(data)
            f.flush()
            os.utime(f.fileno(), ns=(times.st_atime_ns, times.st_mtime_ns))  # as copy2 kept
        os.replace(tmp, name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
    except BaseException:
        os.unlink(tmp, dir_fd=dst_dir)
        raise
    return True


def _copy_all(out_dir: Path, src: str, dst: str, create: bool = False) -> None:
    """Hydra's files from ``.hydra/<src>`` to ``.hydra/<dst>`` (``""``: ``.hydra`` itself)."""
    hydra = Path(out_dir) / ".hydra"
    top = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)  # the run dir: a link the user chose
    opened = [top]
    try:
        opened.append(_open_dir(top, ".hydra", hydra))
        ends = []
        for sub, make in ((src, False), (dst, create)):
            if sub:
                opened.append(_open_dir(opened[1], sub, hydra / sub, create=make))
            ends.append(opened[-1] if sub else opened[1])
        for name in HYDRA_FILES:
            _copy(ends[0], ends[1], name, hydra / src)
    finally:
        for fd in opened:
            os.close(fd)


def _read_original(out_dir: Path, name: str) -> bytes | None:
    """``.hydra/original/<name>``, read without following a link planted on the way."""
    opened = [os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for sub, path in ((".hydra", out_dir / ".hydra"), ("original", out_dir / ORIGINAL)):
            opened.append(_open_dir(opened[-1], sub, path))
        read = _read(opened[-1], name, out_dir / ORIGINAL)
    finally:
        for fd in opened:
            os.close(fd)
    return None if read is None else read[0]


def keep_original(out_dir: Path) -> None:
    """A new start: keep Hydra's record of this run where a resume cannot overwrite it."""
    if not (Path(out_dir) / ".hydra").exists() and not (Path(out_dir) / ".hydra").is_symlink():
        return
    _copy_all(out_dir, "", "original", create=True)


def restore_original(out_dir: Path) -> None:
    """Put the run's original ``.hydra`` files back; the resume's go to ``.hydra/resumed/``."""
    original = Path(out_dir) / ORIGINAL
    if not original.exists() and not original.is_symlink():
        return
    _copy_all(out_dir, "", "resumed", create=True)
    _copy_all(out_dir, "original", "")


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> now`` for each setting that differs and could change the numbers."""
    before, after = current_names(flatten(saved)), current_names(flatten(current))
    keys = sorted(k for k in set(before) | set(after) if changes_training(k))
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
    text = _read_original(out_dir, "config.yaml") or b""
    saved = OmegaConf.to_container(OmegaConf.create(text.decode(errors="replace")), resolve=False)
    current = OmegaConf.to_container(cfg, resolve=False)
    differences = config_differences(saved, current)
    if differences:
        restore_original(out_dir)
        raise RunDirError(
            f"resume=true with other settings than the run in {out_dir} started with: "
            + "; ".join(differences)
            + ". Resume with the same overrides (see .hydra/overrides.yaml there)"
        )

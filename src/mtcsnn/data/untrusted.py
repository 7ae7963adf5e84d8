"""Reading files from others with bounded work: regular files only, sizes capped, and ``.npz``
archives counted by what they decompress to.

A FIFO, a device or a socket among the inputs would block a read forever (or, for a device,
act when opened), so a path is looked at with ``stat`` and opened only when it is a regular
file; the file opened is checked again (``fstat``) in case it was swapped in between. Every
text a command reads whole is read with a size bound, and an ``.npz`` is refused from its
headers when the arrays that will be read would take more than :data:`MAX_NPZ_BYTES`.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mtcsnn.errors import DataError

__all__ = [
    "MAX_NPZ_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_TABLE_BYTES",
    "NpzError",
    "UnreadableFile",
    "check_npz",
    "file_problem",
    "npz_headers",
    "open_regular",
    "read_bytes",
    "read_text",
]

# the arrays of one .npz read at a time: RetinaMNIST at 224 px is about 0.24 GB, a folder of
# 10,000 photographs at 224 px 1.5 GB
MAX_NPZ_BYTES = 4 * 1024**3
# a table read whole (a labels CSV, a run's predictions): a million rows take about 100 MB
MAX_TABLE_BYTES = 512 * 1024**2
# a small file of settings or results (metrics.json, failed.json, overrides.yaml)
MAX_RECORD_BYTES = 64 * 1024**2
# an image file larger than this is not read (a camera photograph is a few MB)
MAX_IMAGE_FILE_BYTES = 1024**3
KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class UnreadableFile(DataError, OSError):
    """A file that is not read: not a regular file, too large, or missing. ``str()`` is the
    reason alone (``a FIFO (named pipe), not a regular file``); ``filename`` is the path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(reason)
        self.filename = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class NpzError(DataError, ValueError):
    """An ``.npz`` refused from its headers: too large, pickled objects, or inconsistent."""


def kind_of(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def size_text(size: int) -> str:
    """``4 GiB``, ``7.6 GiB``, ``12.0 MiB``, ``300 bytes``."""
    for unit, name in ((1024**3, "GiB"), (1024**2, "MiB")):
        if size >= unit:
            return f"{size // unit} {name}" if size % unit == 0 else f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def _problem(info: os.stat_result, max_bytes: int | None) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return f"{kind_of(info.st_mode)}, not a regular file"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"{size_text(info.st_size)}, more than the {size_text(max_bytes)} allowed"
    return None


def file_problem(path: str | Path, max_bytes: int | None = None) -> str | None:
    """Why ``path`` is not read (not a regular file, larger than ``max_bytes``, missing), or
    None. Looks with ``stat`` (a link is followed to what it names) and never opens it."""
    try:
        info = os.stat(path)
    except OSError as err:  # missing, no permission to search a folder, a link loop
        return err.strerror or str(err)
    return _problem(info, max_bytes)


def open_regular(path: str | Path, max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for reading in binary, only if it is a regular file of at most
    ``max_bytes``; else :class:`UnreadableFile`. A special file is never opened."""
    problem = file_problem(path, max_bytes)
    if problem is not None:
        raise UnreadableFile(path, problem)
    # non-blocking: a FIFO swapped in after the look above cannot block the open
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        problem = _problem(os.fstat(fd), max_bytes)
        if problem is not None:
            raise UnreadableFile(path, problem)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked while reading too: a file
    that grows is not read past the bound)."""
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(path, f"more than the {size_text(max_bytes)} allowed")
    return data


def read_text(path: str | Path, max_bytes: int, encoding: str = "utf-8") -> str:
    """:func:`read_bytes` decoded (``UnicodeDecodeError`` for bytes of another encoding)."""
    return read_bytes(path, max_bytes).decode(encoding)


HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


Member = tuple[tuple[int, ...], np.dtype, "str | None"]


def _members(file: str | Path | BinaryIO) -> dict[str, Member]:
    """Shape, type and what is wrong (or None) of each ``.npy`` member, from the headers."""
    members: dict[str, Member] = {}
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename.removesuffix(".npy")
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in HEADER_READERS:
                    raise NpzError(f"{key}: .npy format version {version} is not supported")
                shape, _, dtype = HEADER_READERS[version](f)
                header_length = f.tell()
            if not all(isinstance(n, int) and n >= 0 for n in shape):
                raise NpzError(f"{key} has shape {shape}, not a shape of an array")
            problem = None
            if dtype.hasobject:
                problem = f"{key} holds Python objects (pickled), which are never loaded"
            elif info.file_size != header_length + decoded_bytes(shape, dtype):
                problem = (
                    f"{key} holds {info.file_size - header_length} bytes of data, but its "
                    f"header describes {dtype} {tuple(shape)} "
                    f"({decoded_bytes(shape, dtype)} bytes): a damaged or crafted file"
                )
            members[key] = (tuple(shape), dtype, problem)
    return members


def npz_headers(file: str | Path | BinaryIO) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and type of each array of an ``.npz``, read from the headers alone, checked.

    Nothing is decompressed beyond the headers. An array of Python objects (pickled), a shape
    that is not whole non-negative numbers, or a member whose size in the archive is not what
    its header describes (numpy would allocate for data that is not there) is an
    :class:`NpzError`; a file that is not a zip archive is a ``zipfile.BadZipFile``.
    """
    return check_npz(file, limit=None)


def decoded_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def check_npz(
    file: str | Path | BinaryIO,
    keys: Iterable[str] | None = None,
    limit: int | None = MAX_NPZ_BYTES,
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and type of each array of an ``.npz`` (see :func:`npz_headers`), and an
    :class:`NpzError` when the arrays ``keys`` (all when None; those absent are left to the
    caller) would take more than ``limit`` bytes decompressed together, or one of them is
    pickled or not what its header says. Members that will not be read are not judged."""
    members = _members(file)
    chosen = list(members) if keys is None else [k for k in keys if k in members]
    total = sum(decoded_bytes(*members[k][:2]) for k in chosen)
    if limit is not None and total > limit:
        largest = max(chosen, key=lambda k: decoded_bytes(*members[k][:2]))
        shape, dtype, _ = members[largest]
        raise NpzError(
            f"its arrays would take {size_text(total)} decompressed, more than the "
            f"{size_text(limit)} allowed (largest: {largest}, {dtype} {shape})"
        )
    for key in chosen:
        if members[key][2] is not None:
            raise NpzError(members[key][2])
    return {key: (shape, dtype) for key, (shape, dtype, _) in members.items()}

"""Writing the framework's files so they cannot be turned against their reader or their folder.

Low in the layers (only :mod:`mtcsnn.errors` below it) so that every writer shares it: the run
plumbing, the inference outputs (Grad-CAM overlays, exported models) and the data module's
side files.

- :func:`write_atomic`: a file is written whole or not at all, into a temporary file that is
  created new (``O_EXCL | O_NOFOLLOW``: never an existing file, never through a symlink) and
  then renamed over the target. A symlink planted at the target's name is replaced by the
  file; the file it pointed to is never written.
- :func:`spreadsheet_text`, :func:`csv_text`: a CSV cell that a spreadsheet would run as a
  formula is escaped as OWASP advises for CSV injection.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from mtcsnn.errors import WriteError

__all__ = [
    "FILE_MODE",
    "WRITE_FAILURES",
    "create_new",
    "csv_text",
    "failed_write",
    "spreadsheet_row",
    "spreadsheet_text",
    "write_atomic",
    "write_text_atomic",
]


def _file_mode() -> int:
    """The mode a new file gets here (0o666 less the umask); mkstemp would make it 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()
# O_NOFOLLOW and O_CLOEXEC are POSIX; O_BINARY only matters (and only exists) on Windows
_NEW_FILE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def create_new(path: str | Path, mode: int = FILE_MODE) -> int:
    """A file descriptor of a file created at ``path`` by this call, open for writing.

    ``O_EXCL`` fails on any existing name, a symlink (dangling or not) included, so nothing
    is ever written to a file that was there before, nor through a link to elsewhere.
    """
    return os.open(path, _NEW_FILE, mode)


def _temporary_beside(path: Path) -> tuple[int, Path]:
    """A new hidden file next to ``path`` (``.<name>.<random>.tmp``), created exclusively."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return create_new(tmp), tmp
        except FileExistsError:  # a name taken, or a link planted there: draw another
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: str | Path, write: Callable[[IO], object], binary: bool = False) -> None:
    """``write(file)`` into a new temporary file beside ``path``, then rename it to ``path``.

    A kill or a full disk never leaves half a file: the old one stays until the new one is
    whole. The rename replaces whatever has the name (a symlink included: the link goes, its
    target is untouched), so nothing is written through a link planted at ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_beside(path)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        os.fchmod(fd, FILE_MODE)  # the umask's mode, whatever the process's default
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as raised:
        tmp.unlink(missing_ok=True)
        err = raised if isinstance(raised, OSError) else failed_write(raised)
        if err is None:
            raise
        kept = " (the previous file is kept)" if path.exists() else ""
        raise WriteError(f"cannot write {path}: {err.strerror or err}{kept}") from None


# the OS's errors for a write that did not fit: full disk, quota, file size limit, I/O
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def failed_write(error: BaseException) -> OSError | None:
    """The write the OS refused (:data:`WRITE_FAILURES`) behind ``error``: ``error`` itself, or
    the error a library's own was raised while handling (PyTorch's checkpoint writer reports a
    full disk as ``[enforce fail at inline_container.cc] unexpected pos``); else None."""
    if not isinstance(error, Exception):  # a kill or Ctrl-C is never a failed write
        return None
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in WRITE_FAILURES:
            return cause
        seen.add(id(cause))
        # as a traceback shows it: a ``raise ... from None`` hides what it was handling
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return None


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


# A cell a spreadsheet reads as a formula starts with one of these (OWASP, "CSV Injection"),
# the full-width forms included, which some spreadsheets read as their ASCII forms.
FORMULA_STARTS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
# what a spreadsheet skips before it looks at the first character
_LEADING_BLANKS = " \u00a0\u3000\t\r\n"
# a plain decimal number is data, not a formula: "-0.5" and "1e-05" stay numbers
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_text(cell: object) -> object:
    """A CSV cell as OWASP advises against formula injection: text that a spreadsheet would
    run (it begins with ``=``, ``+``, ``-``, ``@``, a tab or a line break, perhaps after
    blanks) gets a leading ``'``, which shows it as text. Numbers (ints, floats, and text that
    is a plain decimal number such as ``-0.5``) are returned unchanged."""
    if not isinstance(cell, str) or _NUMBER.fullmatch(cell):
        return cell
    stripped = cell.lstrip(_LEADING_BLANKS)
    if cell[:1] in FORMULA_STARTS or stripped[:1] in FORMULA_STARTS:
        return "'" + cell
    return cell


def spreadsheet_row(row: Iterable) -> list:
    """Every cell of a CSV row through :func:`spreadsheet_text`."""
    return [spreadsheet_text(cell) for cell in row]


def csv_text(header: Iterable, rows: Iterable[Iterable]) -> str:
    """CSV text (rows end in ``\\n``) that a spreadsheet shows as it is: each text cell through
    :func:`spreadsheet_text`, and each cell holding a delimiter, a quote or any line break
    quoted, a lone carriage return included (which ``csv.writer`` leaves bare when rows end in
    ``\\n``, and which a spreadsheet reads as a new row whose first cell could be a formula).
    """
    buf = io.StringIO()
    # "\r\n" as the terminator makes the writer quote cells that hold either character; each
    # row's own terminator is then written as "\n"
    writer = csv.writer(buf, lineterminator="\r\n")
    lines = []
    for row in (header, *rows):
        buf.seek(0)
        buf.truncate()
        writer.writerow(spreadsheet_row(row))
        lines.append(buf.getvalue()[:-2] + "\n")
    return "".join(lines)

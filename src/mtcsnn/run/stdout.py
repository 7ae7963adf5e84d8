"""What a command does when the reader of its output goes away (``... | head``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TextIO

# the status of a shell tool stopped by a closed pipe (128 + SIGPIPE)
CLOSED_PIPE_STATUS = 141


def quiet_on_closed_pipe(command: Callable[[], int]) -> int:
    """``command()``'s exit status; when stdout's reader has gone (``... | head``), the status
    a shell tool ends with there, without a traceback.

    The files a command writes are written before it prints that it wrote them, each whole
    or not at all, so stopping at a print loses none of them.
    """
    try:
        status = command()
        sys.stdout.flush()  # the pipe breaks here when the reader left before the end
        return status
    except BrokenPipeError:
        _to_devnull(sys.stdout)  # the interpreter flushes stdout once more as it ends
        return CLOSED_PIPE_STATUS


def _to_devnull(stream: TextIO) -> None:
    """Let later writes to ``stream`` (and the interpreter's last flush) go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class ConsoleHandler(logging.StreamHandler):
    """The console handler of a command's log (Hydra's ``job_logging``).

    When the reader of the console goes away (``python -m mtcsnn.train | head``), the console
    lines stop there and the run goes on: ``train.log`` keeps every line, and a training run is
    not lost for a closed pager. Without it, every later line printed a logging error.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            _to_devnull(self.stream)
            return
        super().handleError(record)

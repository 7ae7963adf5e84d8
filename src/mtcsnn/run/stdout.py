"""What a command that prints its results does when the reader of its output goes away."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

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
        # the interpreter flushes stdout once more as it ends: let that flush go nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return CLOSED_PIPE_STATUS

"""A callback that signals its own run at a chosen point, for the resume tests."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SigtermAt(pl.Callback):
    """A signal (SIGTERM, or SIGINT as Ctrl-C sends) after training batch ``batch`` of ``epoch``
    (or its val batch with ``val``)."""

    def __init__(self, epoch: int, batch: int, val: bool = False, signal_name: str = "SIGTERM"):
        self.epoch, self.batch, self.val = epoch, batch, val
        self.signum = getattr(signal, signal_name)
        if self.signum == signal.SIGINT:
            # as in a terminal: pytest-xdist's workers start their children with SIGINT ignored,
            # and a run leaves an ignored SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _maybe_kill(self, trainer: pl.Trainer, batch_idx: int, val: bool) -> None:
        if (trainer.current_epoch, batch_idx, val) == (self.epoch, self.batch, self.val):
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_kill(trainer, batch_idx, val=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        if not trainer.sanity_checking:
            self._maybe_kill(trainer, batch_idx, val=True)

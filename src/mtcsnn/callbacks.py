"""What makes a killed run resumable with the same numbers as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException


class RunState(pl.Callback):
    """Keeps the random state in checkpoints, and saves ``last.ckpt`` when SIGTERM stops a run.

    Lightning checkpoints hold weights, optimiser, schedule and loop counters, not the random
    number generators; the augmentation draws from torch's generator, so a resumed run would
    flip and rotate other images than an uninterrupted one. On SIGTERM Lightning finishes the
    current epoch and stops; this callback then writes ``last.ckpt`` at that epoch end.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.stopped_by_sigterm = False

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def state_dict(self) -> dict:
        states = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return {"rng": states}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict.get("rng", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.stopped_by_sigterm = True
            trainer.save_checkpoint(self.last_path)

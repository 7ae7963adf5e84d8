"""What makes a killed run resumable with the same numbers as an uninterrupted one, and the
record of every epoch's val predictions."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

from mtcsnn.run.distributed import SLURM_WARNING
from mtcsnn.run.files import val_predictions_csv, write_atomic, write_text_atomic

log = logging.getLogger(__name__)

LIGHTNING_SIGNAL_LOGGER = "pytorch_lightning.trainer.connectors.signal_connector"
# how the console names the signal that stopped a run
SIGNAL_NAMES = {
    "SIGINT": "SIGINT (Ctrl-C)",
    "SIGTERM": "SIGTERM",
    "SIGUSR2": "SIGUSR2 (SLURM: preemption or the time limit ahead)",
}


def signal_label(name: str | None) -> str:
    """``SIGINT (Ctrl-C)``, ``SIGTERM``, ``SIGUSR1`` ...: a stopping signal as people know it."""
    return SIGNAL_NAMES.get(name or "SIGTERM", name or "SIGTERM")


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with the epochs in file names counted from 1, as the console
    counts them: ``epoch_001.ckpt`` is the first epoch.

    Its state in a checkpoint keeps ModelCheckpoint's key, so a run folder written with the
    plain callback (``epoch_000.ckpt`` for the first epoch) resumes with its best score and
    best file.
    """

    def format_checkpoint_name(self, metrics: dict, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, its epoch counted from 1 of the run's epochs (``Epoch 1/3``)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(
            f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )


class EpochRichProgressBar(RichProgressBar):
    """Lightning's rich bar (its default where rich is installed), the epoch counted from 1."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            text += f"/{self.trainer.max_epochs}"
        # as wide as the validation bar's, as Lightning pads it: no flicker between the two
        return f"{text:{len(self.validation_description)}}"


def epoch_progress_bar() -> ProgressBar:
    """The bar Lightning would show (rich where installed, else tqdm), counting from 1."""
    return EpochRichProgressBar() if _RICH_AVAILABLE else EpochProgressBar()


class RunState(pl.Callback):
    """Keeps the random state in checkpoints, and stops a run on SIGTERM (or SLURM's warning,
    SIGUSR2) at an epoch end.

    Lightning checkpoints hold weights, optimiser, schedule and loop counters, not the random
    number generators; the augmentation draws from torch's generator, so a resumed run would
    flip and rotate other images than an uninterrupted one. Lightning's own SIGTERM handler
    stops after the current batch, and a run resumed from the middle of an epoch sees other
    pairs and augmentations than an uninterrupted one; so SIGTERM is only noted here, handed
    to Lightning once the epoch (validation included) is over, and ``last.ckpt`` is written
    at that epoch end.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        # "SIGTERM", "SIGINT" or "SIGUSR2" once one asked to stop
        self.stop_signal: str | None = None
        self._lightning_handler = None
        self._slurm_handler = None

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

    def _note_sigterm(self, signum, frame) -> None:
        self.stop_signal = "SIGTERM"  # nothing else: this runs between any two bytecodes

    def _note_slurm_warning(self, signum, frame) -> None:
        self.stop_signal = self.stop_signal or "SIGUSR2"

    def _note_sigint(self, signum, frame) -> None:
        """Ctrl-C: stop like SIGTERM at the epoch end; a second Ctrl-C stops at once."""
        if self.stop_signal == "SIGINT":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stop_signal = self.stop_signal or "SIGINT"

    def _defer_sigterm(self) -> None:
        # Lightning installs its handler just before the sanity check and training start
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if current != self._note_sigterm:
            self._lightning_handler = current
            signal.signal(signal.SIGTERM, self._note_sigterm)
        if (
            SLURM_WARNING is not None
            and signal.getsignal(SLURM_WARNING) != self._note_slurm_warning
        ):
            # in a SLURM job the run stops at the epoch end too, then the job is requeued
            # (mtcsnn.run.slurm); whatever handled the signal before gets it back at teardown
            self._slurm_handler = signal.getsignal(SLURM_WARNING)
            signal.signal(SLURM_WARNING, self._note_slurm_warning)
        if callable(self._lightning_handler) and signal.getsignal(signal.SIGINT) in (
            signal.default_int_handler,
            self._note_sigint,
        ):
            signal.signal(signal.SIGINT, self._note_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) == self._note_sigint:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if SLURM_WARNING is not None and self._slurm_handler is not None:
                signal.signal(SLURM_WARNING, self._slurm_handler)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._defer_sigterm()

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._defer_sigterm()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        # every rank takes part, so all stop at the same epoch end
        requested = self.stop_signal is not None
        stop = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if stop and callable(self._lightning_handler):
            self.stop_signal = self.stop_signal or "SIGTERM"  # another rank's signal
            log.info(
                "%s received: stopping at the end of epoch %d",
                signal_label(self.stop_signal),
                trainer.current_epoch + 1,
            )
            # Lightning's handler raises SIGTERMException once this epoch is complete; its own
            # "Received SIGTERM" line would misname a Ctrl-C, and the line above says it all
            notifier = logging.getLogger(LIGHTNING_SIGNAL_LOGGER)
            disabled, notifier.disabled = notifier.disabled, True
            try:
                self._lightning_handler(signal.SIGTERM, None)
            finally:
                notifier.disabled = disabled

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.last_path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside their name, then renamed.

    Lightning stages a checkpoint in the system's temporary folder and moves it over; on a full
    disk that can leave a truncated file. Here a failed write removes its temporary file, the
    last good checkpoint stays, and the run ends with one line naming the file.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f), binary=True)


class ValPredictions(pl.Callback):
    """Every training epoch's val class probabilities and severity scores, in ``path`` (a CSV
    written when training ends: epoch, index, grade, one probability per class, score).

    The best-val checkpoint is the maximum of many noisy val evaluations, so its val AUROC
    flatters runs whose val curve swings most; with every epoch's predictions,
    ``mtcsnn.report`` scores a checkpoint chosen on half the val images on the other half.
    The epochs so far travel in ``last.ckpt``, so a resumed run's file is whole. The scores let
    the report place a test image's score among the grade bands fitted on val (its score margin).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.epochs: list[int] = []
        self.probs: list[torch.Tensor] = []  # one (images x classes) tensor per epoch
        # one (images,) tensor per epoch; None for epochs of a checkpoint from before scores
        self.scores: list[torch.Tensor | None] = []
        self.index: torch.Tensor | None = None  # each row's position in the val split
        self.grades: torch.Tensor | None = None
        self._batches: list[dict[str, torch.Tensor]] = []

    def state_dict(self) -> dict:
        return {
            "epochs": list(self.epochs),
            "probs": list(self.probs),
            "scores": list(self.scores),
            "index": self.index,
            "grades": self.grades,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.probs = list(state_dict.get("probs", []))
        self.scores = list(state_dict.get("scores", [None] * len(self.probs)))
        self.index = state_dict.get("index")
        self.grades = state_dict.get("grades")

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._batches = []

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0
    ) -> None:
        if isinstance(outputs, dict) and "probs" in outputs:
            self._batches.append({k: outputs[k].detach().cpu() for k in ("index", "grade")})
            self._batches[-1]["probs"] = outputs["probs"].detach().float().cpu()
            if "score" in outputs:
                self._batches[-1]["score"] = outputs["score"].detach().float().cpu()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        batches, self._batches = self._batches, []
        if trainer.sanity_checking:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shares: list = [None] * torch.distributed.get_world_size()  # every rank gathers
            torch.distributed.all_gather_object(shares, batches)
            batches = [b for share in shares for b in share]
        if not batches:
            return
        index = torch.cat([b["index"] for b in batches])
        # one row per image, in index order (DDP's sampler may repeat an image to even shares)
        order = torch.argsort(index, stable=True)
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        rows = order[first]
        grades = torch.cat([b["grade"] for b in batches])[rows]
        probs = torch.cat([b["probs"] for b in batches])[rows]
        has_scores = all("score" in b for b in batches)
        scores = torch.cat([b["score"] for b in batches])[rows] if has_scores else None
        epoch = trainer.current_epoch
        kept = [n for n, e in enumerate(self.epochs) if e < epoch]  # a resumed epoch replaces
        self.epochs = [self.epochs[n] for n in kept] + [epoch]
        self.probs = [self.probs[n] for n in kept] + [probs]
        self.scores = [self.scores[n] for n in kept] + [scores]
        self.index, self.grades = index[rows], grades

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        # once a run: rewriting a growing file every epoch would cost a GPU run seconds
        if trainer.is_global_zero and self.epochs:
            assert self.index is not None and self.grades is not None
            write_text_atomic(
                self.path,
                val_predictions_csv(self.epochs, self.index, self.grades, self.probs, self.scores),
            )

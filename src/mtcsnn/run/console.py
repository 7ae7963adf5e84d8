"""What a run prints: library noise off, one line per epoch, metric tables with 4 digits."""

from __future__ import annotations

import logging
import sys
import warnings

import pytorch_lightning as pl

log = logging.getLogger("mtcsnn")


class OncePerProcess(logging.Filter):
    """Lightning's advertising tips never; its device lines ("GPU available ...") once.

    A run builds three trainers (fit, validate, test) and a sweep many more: each would print
    the same lines again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Tip:" in message:
            return False
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_FILTER = OncePerProcess()
# the start of Lightning's warning wherever `srun` is installed (SLURMEnvironment): a run
# started without srun is a plain run, and the cluster docs say how to launch on SLURM
SRUN_HINT = "The `srun` command is available on your system but is not used"


def quiet_libraries() -> None:
    """Silence repeated and advertising lines and other libraries' deprecation warnings."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # the user cannot act on a library's own deprecations; ours would be raised as errors
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=SRUN_HINT)
    # callbacks=ema: our configure_model only compiles (no sharding), so the memory warning
    # about sharded layers does not apply
    warnings.filterwarnings("ignore", message=".*WeightAveraging doesn't support sharding.*")
    # the ONNX exporter's step-by-step INFO lines
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def progress_bar_wanted(enabled: bool) -> bool:
    """A progress bar only on a terminal: in a file or a pipe it is escape codes."""
    return enabled and sys.stderr.isatty()


def metrics_line(values: dict[str, float], names: tuple[str, ...] | None = None) -> str:
    """``auroc 0.8123 acc 0.5100 ...``: the values with 4 digits."""
    keys = names or tuple(values)
    # the grade metrics; the screening figures (dicts of referable-DR figures) have their line
    return " ".join(
        f"{key} {values[key]:.4f}"
        for key in keys
        if isinstance(values.get(key), (int, float)) and key in values
    )


def screening_line(values: dict) -> str:
    """``referable (grade >= 2) auroc 0.8123 sensitivity 0.8700 specificity 0.6100 at 0.3120
    (chosen on val); ... ece 0.0812``: what a screening study reads."""
    parts = []
    for value in values.values():
        if isinstance(value, dict) and "cut" in value:
            shown = " ".join(
                f"{name} {value[name]:.4f}"
                for name in ("auroc", "sensitivity", "specificity")
                if value.get(name) is not None
            )
            at = value.get("threshold")
            where = f" at {at:.4f} (chosen on val)" if at is not None else ""
            parts.append(f"referable (grade >= {value['cut']}) {shown}{where}")
    parts.append(metrics_line(values, ("ece", "brier", "nll")))
    scaled = values.get("temperature_scaled")
    if isinstance(scaled, dict):
        parts.append(
            f"at temperature {scaled['temperature']:.3f} (fitted on val) ece {scaled['ece']:.4f}"
        )
    return "; ".join(parts)


class EpochLog(pl.Callback):
    """One log line per epoch (console and ``train.log``): losses and val metrics, 4 digits."""

    def __init__(self, monitor: str = "val/auroc", mode: str = "max") -> None:
        self.monitor, self.sign = monitor, 1.0 if mode == "max" else -1.0
        self.best: tuple[float, int] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # after this epoch's validation, with the epoch's mean train loss
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        epoch = trainer.current_epoch + 1  # counted from 1: the first epoch is epoch 1
        value = metrics.get(self.monitor)
        if value is not None and (self.best is None or self.sign * (value - self.best[0]) > 0):
            self.best = (value, epoch)
        shown = {
            "train/loss": metrics.get("train/loss"),
            "val/loss": metrics.get("val/loss"),
            "val/auroc": metrics.get("val/auroc"),
            "val/acc": metrics.get("val/acc"),
            "val/kappa": metrics.get("val/kappa"),
        }
        text = metrics_line({k: v for k, v in shown.items() if v is not None})
        if self.best:
            text += f" (best {self.monitor} {self.best[0]:.4f} at epoch {self.best[1]})"
        log.info("epoch %d/%d: %s", epoch, trainer.max_epochs, text)

    # kept in checkpoints, so a resumed run names the best epoch before the stop too; "best" held
    # an epoch counted from 0 in checkpoints of earlier versions
    def state_dict(self) -> dict:
        return {"best_counted_from_1": list(self.best) if self.best else None}

    def load_state_dict(self, state_dict: dict) -> None:
        best = state_dict.get("best_counted_from_1")
        if best is None and state_dict.get("best"):
            best = (state_dict["best"][0], int(state_dict["best"][1]) + 1)
        self.best = (float(best[0]), int(best[1])) if best else None

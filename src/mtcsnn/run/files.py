"""What a run leaves in its output dir, written atomically so a kill never leaves half a file
and a symlink planted in the folder never redirects a write (see :mod:`mtcsnn.writing`)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

# the one way the framework writes a file (whole or not at all, never through a planted
# symlink), kept importable from here where the run plumbing has always found it
from mtcsnn.writing import FILE_MODE, create_new, write_atomic, write_text_atomic

if TYPE_CHECKING:  # every command loads this module (the sweep's failure callback): no torch
    import torch

__all__ = [
    "FILE_MODE",
    "create_new",
    "data_fingerprint",
    "finish_checkpoint",
    "predictions_csv",
    "val_predictions_csv",
    "versions",
    "write_atomic",
    "write_json",
    "write_text_atomic",
]

PACKAGES = (
    "mtcsnn",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "medmnist",
    "hydra-core",
    "omegaconf",
    "wandb",
)


# what eval, predict and explain read from a checkpoint; the rest only resumes training
WEIGHTS_KEYS = (
    "state_dict",
    "mtcsnn_spec",
    "mtcsnn_config",
    "mtcsnn_referral",
    "mtcsnn_temperature",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)


def finish_checkpoint(path: str | Path, entries: dict[str, object], weights_only: bool) -> None:
    """Add ``entries`` (plain data) to a checkpoint and, with ``weights_only``, drop its
    optimiser, schedule and loop state: one rewrite, whole or not at all.

    An Adam checkpoint is three times its weights; a finished run needs only the weights.
    """
    import torch

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.update(entries)
    if weights_only:
        state = {key: state[key] for key in (*WEIGHTS_KEYS, *entries) if key in state}
    write_atomic(path, lambda f: torch.save(state, f), binary=True)


def data_fingerprint(images: torch.Tensor, grades: torch.Tensor) -> str:
    """A short hash of a split's images and grades: runs tested on other data never pair."""
    digest = hashlib.sha256()
    for tensor in (images, grades):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def write_json(path: str | Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _exact(value: float) -> str:
    """9 significant digits: a float32 reads back exactly, so metrics recomputed from a
    predictions file tie no two images the model told apart."""
    return f"{value:.9g}"


def val_predictions_csv(
    epochs: list[int],
    index: torch.Tensor,
    grades: torch.Tensor,
    probs: list[torch.Tensor],
    scores: list[torch.Tensor | None] | None = None,
) -> str:
    """CSV text: epoch, index, true grade, one probability per class and, where every epoch has
    one, the severity score; a row per image and epoch.

    ``index``: each image's position in the val split; ``probs`` and ``scores``: one tensor per
    epoch (a run resumed from a checkpoint written before scores were kept has none for its
    first epochs, and its file has no score column).
    """
    num_classes = probs[0].shape[1] if probs else 0
    kept = [s.tolist() for s in scores or [] if s is not None]
    with_scores = bool(probs) and len(kept) == len(probs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["epoch", "index", "grade", *[f"prob_{c}" for c in range(num_classes)]]
    writer.writerow([*header, "score"] if with_scores else header)
    images = list(zip(index.tolist(), grades.tolist(), strict=True))
    for n, (epoch, epoch_probs) in enumerate(zip(epochs, probs, strict=True)):
        for m, ((i, grade), row) in enumerate(zip(images, epoch_probs.tolist(), strict=True)):
            cells = [epoch, i, grade, *map(_exact, row)]
            if with_scores:
                cells.append(_exact(kept[n][m]))
            writer.writerow(cells)
    return buf.getvalue()


def predictions_csv(predictions: dict[str, torch.Tensor]) -> str:
    """CSV text: index, true grade, predicted grade, one probability per class, severity score."""
    probs = predictions["probs"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["index", "grade", "pred", *[f"prob_{c}" for c in range(probs.shape[1])], "score"]
    )
    order = predictions["index"].argsort()
    for i in order.tolist():
        writer.writerow(
            [
                int(predictions["index"][i]),
                int(predictions["grade"][i]),
                int(probs[i].argmax()),
                *map(_exact, probs[i].tolist()),
                f"{float(predictions['score'][i]):.6f}",
            ]
        )
    return buf.getvalue()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def best_epoch_number(metrics: dict) -> int | None:
    """The best-val epoch of a ``metrics.json``, counted from 1 (``epoch_003.ckpt``: 3).

    ``best_epoch_number`` is counted from 1; runs of earlier versions stored ``best_epoch``,
    counted from 0 like Lightning's ``epoch`` columns (``csv/metrics.csv``,
    ``val_predictions.csv``), which still are.
    """
    number = metrics.get("best_epoch_number")
    if number is None and isinstance(metrics.get("best_epoch"), int):
        number = metrics["best_epoch"] + 1
    return number

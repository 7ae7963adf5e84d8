"""What a run leaves in its output dir, written atomically so a kill never leaves half a file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mtcsnn.errors import WriteError

if TYPE_CHECKING:  # every command loads this module (the sweep's failure callback): no torch
    import torch

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


def _file_mode() -> int:
    """The mode a new file gets here (0o666 less the umask); mkstemp would make it 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def write_atomic(path: str | Path, write: Callable[[IO], object], binary: bool = False) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``.

    A kill or a full disk never leaves half a file: the old one stays until the new one is whole.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        kept = " (the previous file is kept)" if path.exists() else ""
        raise WriteError(f"cannot write {path}: {err.strerror or err}{kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


# what eval, predict and explain read from a checkpoint; the rest only resumes training
WEIGHTS_KEYS = (
    "state_dict",
    "mtcsnn_spec",
    "mtcsnn_config",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)


def keep_weights_only(path: str | Path) -> None:
    """Rewrite a Lightning checkpoint in place without optimiser, schedule and loop state.

    An Adam checkpoint is three times its weights; a finished run needs only the weights.
    """
    import torch

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    slim = {key: state[key] for key in WEIGHTS_KEYS if key in state}
    write_atomic(path, lambda f: torch.save(slim, f), binary=True)


def data_fingerprint(images: torch.Tensor, grades: torch.Tensor) -> str:
    """A short hash of a split's images and grades: runs tested on other data never pair."""
    digest = hashlib.sha256()
    for tensor in (images, grades):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def write_json(path: str | Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def val_predictions_csv(
    epochs: list[int], index: torch.Tensor, grades: torch.Tensor, probs: list[torch.Tensor]
) -> str:
    """CSV text: epoch, index, true grade, one probability per class; a row per image and epoch.

    ``index``: each image's position in the val split; ``probs``: one tensor per epoch.
    """
    num_classes = probs[0].shape[1] if probs else 0
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", "index", "grade", *[f"prob_{c}" for c in range(num_classes)]])
    images = list(zip(index.tolist(), grades.tolist(), strict=True))
    for epoch, epoch_probs in zip(epochs, probs, strict=True):
        for (i, grade), row in zip(images, epoch_probs.tolist(), strict=True):
            writer.writerow([epoch, i, grade, *(f"{p:.6g}" for p in row)])
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
                *[f"{p:.7g}" for p in probs[i].tolist()],
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

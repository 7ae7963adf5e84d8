"""``python -m mtcsnn.predict ckpt_path=... inputs=[...]``: grade new fundus images.

Writes a CSV with, per image, its path, the predicted grade, the five class probabilities and
the severity score. Inputs that cannot be read are listed with the reason in ``failures.csv``
beside it; the others are still predicted, and the exit code is 1 when anything failed.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig

from mtcsnn.checkpoint import load_checkpoint
from mtcsnn.errors import ConfigError, MTCSNNError
from mtcsnn.images import ImageSource, expand_inputs, read_all
from mtcsnn.models import MTCSNNModule
from mtcsnn.outputs import write_text_atomic
from mtcsnn.overrides import missing_arguments_message
from mtcsnn.train import CONFIG_PATH

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = (
    "python -m mtcsnn.predict ckpt_path=logs/train/runs/<date>_<time>/checkpoints/"
    "epoch_012.ckpt inputs=[photo.jpg,more_photos/]"
)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError("device", name, "choose one of: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", name, "no CUDA GPU is available here; use device=cpu or auto")
    return torch.device(name)


@torch.no_grad()
def predict_batch(module: MTCSNNModule, images: list[torch.Tensor], device: torch.device):
    """Class probabilities (N x 5) and severity scores (N) of uint8 images."""
    batch = torch.stack(images).to(device).float().div_(255)
    out = module.net(batch)
    return module.probabilities(out).float().cpu(), out.score.float().cpu()


def as_list(inputs: object) -> list[str]:
    if isinstance(inputs, (list, tuple, ListConfig)):
        return [str(i) for i in inputs]
    return [str(inputs)]


def predict(cfg: DictConfig) -> tuple[list[list], list[tuple[str, str]]]:
    """Predict every readable input; returns the CSV rows and ``(input, reason)`` failures."""
    ckpt = load_checkpoint(cfg.ckpt_path)
    device = pick_device(cfg.device)
    module = ckpt.module.to(device).eval()
    sources, failures = expand_inputs(as_list(cfg.inputs))
    rows: list[list] = []
    pending: list[tuple[ImageSource, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        probs, scores = predict_batch(module, [image for _, image in pending], device)
        for (source, _), p, s in zip(pending, probs, scores, strict=True):
            rows.append(
                [source.name, int(p.argmax()), *[f"{v:.7g}" for v in p.tolist()], f"{s:.6f}"]
            )
        pending.clear()

    for source, image, reason in read_all(sources, ckpt.image_size, progress=cfg.progress):
        if image is None:
            failures.append((source.name, reason or "unreadable"))
            continue
        pending.append((source, image))
        if len(pending) >= cfg.batch_size:
            flush()
    flush()
    return rows, failures


def csv_text(header: list[str], rows: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


PREDICTION_HEADER = ["path", "pred", *[f"prob_{c}" for c in range(5)], "score"]


def write_results(rows: list, failures: list[tuple[str, str]], output: Path) -> Path:
    """Both CSVs, always (a header alone where nothing was predicted or nothing failed)."""
    failures_path = output.with_name("failures.csv")
    write_text_atomic(failures_path, csv_text(["input", "reason"], failures))
    write_text_atomic(output, csv_text(PREDICTION_HEADER, rows))
    return failures_path


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    missing = missing_arguments_message(cfg, EXAMPLE)
    if missing:
        raise SystemExit(f"error: {missing}")
    try:
        rows, failures = predict(cfg)
    except MTCSNNError as err:
        raise SystemExit(f"error: {err}") from None
    failures_path = write_results(rows, failures, Path(cfg.output))
    for name, reason in failures:
        log.warning("could not read %s: %s", name, reason)
    if not rows:
        raise SystemExit(f"error: no image could be read from inputs={as_list(cfg.inputs)}")
    log.info("predicted %d images: %s", len(rows), cfg.output)
    if failures:
        raise SystemExit(
            f"error: {len(failures)} input(s) could not be read; listed in {failures_path}"
        )


if __name__ == "__main__":
    main()

"""The test split under each corruption and severity (:mod:`mtcsnn.data.corruptions`):
``robustness.csv``, written by ``mtcsnn.eval corruptions=...`` and by a training run that asks
for it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mtcsnn.data.corruptions import SEVERITIES, corrupt
from mtcsnn.grading.comparison import grade_scores, referable_auroc
from mtcsnn.inference.batch import predict_batch
from mtcsnn.models import MTCSNNModule
from mtcsnn.writing import csv_text, write_text_atomic

log = logging.getLogger("mtcsnn.run.robustness")

HEADER = ["corruption", "severity", "auroc", "acc", "kappa", "referable_auroc"]
BATCH = 256


def _scores(modules: list[MTCSNNModule], images: np.ndarray, grades: np.ndarray) -> dict:
    device = next(modules[0].parameters()).device
    chunks = [
        predict_batch(modules, list(torch.from_numpy(chunk).permute(0, 3, 1, 2)), device)[0]
        for chunk in np.array_split(images, max(1, -(-len(images) // BATCH)))
    ]
    probs = torch.cat(chunks).double().numpy()
    scores = grade_scores(grades, probs)
    return {
        "auroc": scores["auroc"],
        "acc": scores["acc"],
        "kappa": scores["kappa"],
        "referable_auroc": float(referable_auroc(grades[None], probs[None])[0]),
    }


def robustness_rows(
    modules: list[MTCSNNModule], test_split: tuple, corruptions: tuple[str, ...], seed: int
) -> list[dict]:
    """The clean test images' figures (corruption ``none``, severity 0), then each corruption
    at severities 1-5; the same seed corrupts the images the same way for every model."""
    images = test_split[0].permute(0, 2, 3, 1).contiguous().numpy()  # N, H, W, 3 uint8
    grades = test_split[1].numpy()
    for module in modules:  # as tested: no dropout, batch-norm statistics fixed
        module.eval()
    rows = [{"corruption": "none", "severity": 0, **_scores(modules, images, grades)}]
    for name in corruptions:
        for severity in SEVERITIES:
            corrupted = corrupt(images, name, severity, seed=seed)
            rows.append(
                {"corruption": name, "severity": severity, **_scores(modules, corrupted, grades)}
            )
        worst = rows[-1]
        log.info(
            "%s: test AUROC %.4f clean, %.4f at severity 5",
            name,
            rows[0]["auroc"],
            worst["auroc"],
        )
    return rows


def write_robustness(path: Path, rows: list[dict]) -> None:
    table = [
        [row["corruption"], row["severity"], *(f"{row[k]:.6f}" for k in HEADER[2:])] for row in rows
    ]
    write_text_atomic(path, csv_text(HEADER, table))


def measure_finished_run(cfg, out_dir: Path, corruptions: tuple[str, ...]) -> None:
    """A finished run resumed with ``corruptions=...`` and no ``robustness.csv`` yet: its best
    checkpoint (the one it kept) under the corruptions, from the run's own data settings.
    Nothing else of the run changes."""
    from hydra.utils import instantiate

    from mtcsnn.run.checkpoint import load_checkpoint

    target = out_dir / "robustness.csv"
    if not corruptions or target.exists():
        return
    kept = sorted((out_dir / "checkpoints").glob("epoch_*.ckpt"))
    if len(kept) != 1:
        log.warning(
            "robustness not measured: %s keeps %d best checkpoints, not one",
            out_dir / "checkpoints",
            len(kept),
        )
        return
    ckpt = load_checkpoint(kept[0])
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    rows = robustness_rows([ckpt.module], datamodule.splits["test"], corruptions, cfg.seed)
    write_robustness(target, rows)
    log.info("measured the finished run under %d corruptions: %s", len(corruptions), target)

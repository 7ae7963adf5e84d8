"""A trained model outside the framework: ONNX or TorchScript, normalisation inside.

The exported model takes what ``predict`` feeds the network, uint8 RGB images
N x 3 x S x S (S: the model's input size, images prepared as ``preprocessing`` in the JSON
beside it says), and returns the 5 class probabilities (N x 5, as the model's loss defines
them) and the severity score (N). An ensemble's members are exported as one model that averages
them, as ``predict`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mtcsnn.errors import check_choice, require
from mtcsnn.inference.batch import INTENDED_USE, Grader
from mtcsnn.models import MTCSNNModule

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def check_format(fmt: object) -> None:
    check_choice("format", fmt, FORMATS)


def export_model(
    modules: MTCSNNModule | Sequence[MTCSNNModule], image_size: int, fmt: str, path: Path
) -> Path:
    """Write ``modules`` (one, or an ensemble averaged) as ``fmt`` to ``path``, written whole or
    not at all; returns ``path``."""
    check_format(fmt)
    grader = Grader(modules).cpu().eval()
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                torch.jit.trace(grader, example).save(str(partial))
            else:
                require(("onnx", "onnxscript"), "export", "format=onnx")
                batch = torch.export.Dim("batch", min=1)
                program = torch.onnx.export(
                    grader,
                    (example,),
                    input_names=["images"],
                    output_names=["probabilities", "score"],
                    dynamic_shapes={"images": {0: batch}},
                    dynamo=True,
                    verbose=False,
                )
                program.save(str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def model_description(
    fmt: str, image_size: int, checkpoints: Sequence[str], file_name: str
) -> dict:
    """The JSON written beside an exported model: what goes in, what comes out, for what."""
    return {
        "model": file_name,
        "format": fmt,
        # more than one: an ensemble, whose outputs are the members' averaged
        "source_checkpoints": list(checkpoints),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "layout": "NCHW",
            "shape": ["N", 3, image_size, image_size],
            "channels": "RGB",
            "range": [0, 255],
        },
        "preprocessing": {
            "size": image_size,
            "crop": "centre crop to the short side, then bicubic resize to size x size "
            "(an image already size x size is used as it is); RGB, 8 bits per channel",
            "normalisation": "inside the model",
        },
        "outputs": {
            "probabilities": "N x 5: P(grade = 0..4)",
            "score": "N: severity score (its direction is learnt; larger differences mean "
            "larger grade differences)",
        },
        "grades": {
            "0": "no DR",
            "1": "mild",
            "2": "moderate",
            "3": "severe",
            "4": "proliferative DR",
        },
        "intended_use": INTENDED_USE,
    }

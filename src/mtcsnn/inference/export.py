"""A trained model outside the framework: ONNX or TorchScript, normalisation inside.

The exported model takes what ``predict`` feeds the network, uint8 RGB images
N x 3 x S x S (S: the model's input size, images prepared as ``preprocessing`` in the JSON
beside it says), and returns the 5 class probabilities (N x 5, as the model's loss defines
them) and the severity score (N).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtcsnn.errors import check_choice, require
from mtcsnn.inference.batch import INTENDED_USE
from mtcsnn.models import MTCSNNModule

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportedGrader(nn.Module):
    """uint8 images N x 3 x S x S -> (class probabilities N x 5, severity score N)."""

    def __init__(self, module: MTCSNNModule) -> None:
        super().__init__()
        self.net = module.net
        self.loss = module.loss

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(images.float() / 255)
        return self.loss.probabilities(out).float(), out.score.float()


def check_format(fmt: object) -> None:
    check_choice("format", fmt, FORMATS)


def export_model(module: MTCSNNModule, image_size: int, fmt: str, path: Path) -> Path:
    """Write ``module`` as ``fmt`` to ``path`` (written whole or not at all); returns ``path``."""
    check_format(fmt)
    grader = ExportedGrader(module.cpu()).eval()
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


def model_description(fmt: str, image_size: int, checkpoint: str, file_name: str) -> dict:
    """The JSON written beside an exported model: what goes in, what comes out, for what."""
    return {
        "model": file_name,
        "format": fmt,
        "source_checkpoint": checkpoint,
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

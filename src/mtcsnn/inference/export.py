"""A trained model outside the framework: ONNX or TorchScript, normalisation inside.

The exported model takes what ``predict`` feeds the network, uint8 RGB images N x 3 x S x S
(S: the model's input size), prepared as ``preprocessing`` in the JSON beside it says; that
section is written from :data:`mtcsnn.data.fundus.PREPARATION`, the values ``predict``
prepares images with. It returns the 5 class probabilities (N x 5, as the model's loss defines
them) and the severity score (N). An ensemble's members are exported as one model that averages
them, as ``predict`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mtcsnn.data import fundus
from mtcsnn.data.fundus import Preparation
from mtcsnn.errors import check_choice, require
from mtcsnn.inference.batch import INTENDED_USE, Grader
from mtcsnn.models import MTCSNNModule
from mtcsnn.writing import write_atomic

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def check_format(fmt: object) -> None:
    check_choice("format", fmt, FORMATS)


def export_model(
    modules: MTCSNNModule | Sequence[MTCSNNModule],
    image_size: int,
    fmt: str,
    path: Path,
    temperature: float | None = None,
) -> Path:
    """Write ``modules`` (one, or an ensemble averaged) as ``fmt`` to ``path``, written whole or
    not at all, and never through a symlink planted at ``path``; returns ``path``.
    ``temperature``: its probabilities at that temperature (see :class:`Grader`)."""
    check_format(fmt)
    grader = Grader(modules, temperature).cpu().eval()
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(grader, example)
            write_atomic(path, lambda f: torch.jit.save(traced, f), binary=True)
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
            # the bytes, written by the one safe writer (ONNXProgram.save opens a path itself)
            model = program.model_proto.SerializeToString()
            write_atomic(path, lambda f: f.write(model), binary=True)
    return path


def referral_description(cut: int, threshold: float | None, temperature: float | None) -> dict:
    """``model.json``'s ``referral``: how to read referable DR off the exported probabilities."""
    return {
        "referable": f"sum of probabilities of grades >= {cut}",
        "cut": cut,
        # chosen on val for these probabilities (calibrated or not); null: none was chosen
        "threshold": threshold,
        "calibrated": temperature is not None,
        "temperature": temperature,
    }


def model_description(
    fmt: str,
    image_size: int,
    checkpoints: Sequence[str],
    file_name: str,
    preparation: Preparation | None = None,
) -> dict:
    """The JSON written beside an exported model: what goes in, what comes out, for what.

    ``preprocessing`` is written from ``preparation`` (by default
    :data:`mtcsnn.data.fundus.PREPARATION`, the object ``predict`` prepares images with), step
    by step with its values: following it gives the model what ``predict`` gives it.
    """
    preparation = preparation or fundus.PREPARATION
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
            "summary": preparation.summary(image_size),
            "size": image_size,
            "parameters": preparation.as_dict(),
            "steps": preparation.steps(image_size),
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

"""``python -m mtcsnn.export ckpt_path=... format=onnx|torchscript``: a model to take elsewhere.

``ckpt_path=[a.ckpt,b.ckpt,...]`` exports an ensemble as one model that averages its members'
probabilities and scores. ``calibrated=true`` builds the temperature val chose into the model
(its probabilities are those ``predict calibrated=true`` writes).

Writes ``model.onnx`` or ``model.pt`` (uint8 images in, class probabilities and severity score
out, normalisation inside) and ``model.json`` (its input, outputs and intended use, the
preprocessing step by step with its values, written from the values ``predict`` prepares
images with, and the referral threshold val chose for those probabilities) into the output
dir. Neither is ever written through a symlink found there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from mtcsnn.run.cli import EXAMPLE_CKPT, command
from mtcsnn.run.files import write_text_atomic

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = f"python -m mtcsnn.export ckpt_path={EXAMPLE_CKPT} format=onnx"


@command("export", EXAMPLE)
def main(cfg: DictConfig) -> None:
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.inference.export import (
        SUFFIXES,
        check_format,
        export_model,
        model_description,
        referral_description,
    )
    from mtcsnn.run.checkpoint import load_checkpoints, referral_of_models
    from mtcsnn.run.console import quiet_libraries

    quiet_libraries()
    check_format(cfg.format)
    checkpoints = load_checkpoints(cfg.ckpt_path)  # several: an ensemble, averaged
    (cut, threshold), temperature, _ = referral_of_models(checkpoints, cfg.calibrated)
    size = checkpoints[0].image_size  # one size for all members (load_checkpoints checks)
    out_dir = Path(cfg.output_dir)
    path = export_model(
        [c.module for c in checkpoints],
        size,
        cfg.format,
        out_dir / f"model{SUFFIXES[cfg.format]}",
        temperature,
    )
    about = model_description(cfg.format, size, [str(c.path) for c in checkpoints], path.name)
    about["referral"] = referral_description(cut, threshold, temperature)
    write_text_atomic(out_dir / "model.json", json.dumps(about, indent=2) + "\n")
    log.info("wrote %s and %s", path, out_dir / "model.json")
    log.info("%s", about["intended_use"])


if __name__ == "__main__":
    main()

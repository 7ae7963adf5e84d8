"""``python -m mtcsnn.explain ckpt_path=... inputs=[...]``: Grad-CAM overlays as PNG files."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from mtcsnn.errors import require
from mtcsnn.run.cli import EXAMPLE_CKPT, command

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = f"python -m mtcsnn.explain ckpt_path={EXAMPLE_CKPT} inputs=[photo.jpg]"


@command("explain", EXAMPLE)
def main(cfg: DictConfig) -> None:
    require("captum", "explain", "mtcsnn.explain")
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.inference.batch import pick_device
    from mtcsnn.inference.gradcam import explain_inputs
    from mtcsnn.inference.images import input_list
    from mtcsnn.run.checkpoint import load_checkpoint

    ckpt = load_checkpoint(cfg.ckpt_path)
    result = explain_inputs(
        ckpt.module,
        input_list(cfg.inputs),
        ckpt.image_size,
        pick_device(cfg.device),
        Path(cfg.output_dir),
        layer=cfg.layer,
        max_images=cfg.max_images,
        progress=cfg.progress,
    )
    if result.skipped:
        log.warning(
            "max_images=%d: explaining the first %d of %d images, skipping %d "
            "(raise max_images to explain more)",
            cfg.max_images,
            cfg.max_images,
            result.found,
            result.skipped,
        )
    for name, reason in result.failures:
        log.warning("could not read or explain %s: %s", name, reason)
    log.info("wrote %d Grad-CAM overlays to %s", len(result.written), cfg.output_dir)
    if result.failures or not result.written:
        raise SystemExit(f"error: {len(result.failures)} input(s) could not be read or explained")


if __name__ == "__main__":
    main()

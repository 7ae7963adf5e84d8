"""``python -m mtcsnn.explain ckpt_path=... inputs=[...]``: Grad-CAM overlays as PNG files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mtcsnn.cam import cam_layer, grad_cam
from mtcsnn.checkpoint import load_checkpoint
from mtcsnn.errors import MTCSNNError
from mtcsnn.images import expand_inputs, read_all
from mtcsnn.overrides import missing_arguments_message
from mtcsnn.predict import as_list, pick_device
from mtcsnn.train import CONFIG_PATH

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = (
    "python -m mtcsnn.explain ckpt_path=logs/train/runs/<date>_<time>/checkpoints/"
    "epoch_012.ckpt inputs=[photo.jpg]"
)


def overlay_png(image: torch.Tensor, cam: torch.Tensor, title: str, path: Path) -> None:
    """The image and the image with its Grad-CAM map on top, side by side."""
    from matplotlib.figure import Figure

    rgb = image.permute(1, 2, 0).cpu().numpy()
    fig = Figure(figsize=(5, 2.8))
    axes = fig.subplots(1, 2)
    axes[0].imshow(rgb)
    axes[1].imshow(rgb)
    axes[1].imshow(cam.cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/"))[-120:]


def unique_path(out_dir: Path, name: str, taken: set[Path]) -> Path:
    """``<name>_gradcam.png``, numbered when another input already gave that name.

    ``eye.png`` and ``eye.jpg`` keep their suffixes; names that differ only in punctuation
    (``a b.png``, ``a_b.png``) map to one stem and get ``_2``, ``_3``, ...
    """
    stem = file_stem(name)
    path, number = out_dir / f"{stem}_gradcam.png", 1
    while path in taken or path.exists():
        number += 1
        path = out_dir / f"{stem}_{number}_gradcam.png"
    taken.add(path)
    return path


def explain(cfg: DictConfig) -> tuple[list[Path], list[tuple[str, str]]]:
    ckpt = load_checkpoint(cfg.ckpt_path)
    device = pick_device(cfg.device)
    module = ckpt.module.to(device).eval()
    net = module.net
    layer = cam_layer(net, ckpt.image_size, cfg.layer)
    sources, failures = expand_inputs(as_list(cfg.inputs))
    if len(sources) > cfg.max_images:
        log.warning(
            "max_images=%d: explaining the first %d of %d images, skipping %d "
            "(raise max_images to explain more)",
            cfg.max_images,
            cfg.max_images,
            len(sources),
            len(sources) - cfg.max_images,
        )
    sources = sources[: cfg.max_images]
    out_dir = Path(cfg.output_dir)
    taken: set[Path] = set()
    written: list[Path] = []
    for source, image, reason in read_all(sources, ckpt.image_size, progress=cfg.progress):
        if image is None:
            failures.append((source.name, reason or "unreadable"))
            continue
        x = image.unsqueeze(0).to(device).float().div(255)
        with torch.no_grad():
            probs = module.probabilities(net(x))[0]
        grade = int(probs.argmax())
        cam = grad_cam(module.class_scores, x, torch.tensor([grade], device=device), layer)[0]
        path = unique_path(out_dir, source.name, taken)
        overlay_png(
            x[0], cam, f"{Path(source.name).name}\ngrade {grade} (p={probs[grade]:.2f})", path
        )
        written.append(path)
    return written, failures


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="explain")
def main(cfg: DictConfig) -> None:
    missing = missing_arguments_message(cfg, EXAMPLE)
    if missing:
        raise SystemExit(f"error: {missing}")
    try:
        written, failures = explain(cfg)
    except (MTCSNNError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    for name, reason in failures:
        log.warning("could not read %s: %s", name, reason)
    log.info("wrote %d Grad-CAM overlays to %s", len(written), cfg.output_dir)
    if failures or not written:
        raise SystemExit(f"error: {len(failures)} input(s) could not be read")


if __name__ == "__main__":
    main()

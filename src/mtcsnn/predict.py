"""``python -m mtcsnn.predict ckpt_path=... inputs=[...]``: grade new fundus images.

Writes a CSV with, per image, its path, the predicted grade, the five class probabilities, the
severity score, P(referable DR) (grade >= 2, or the cut the model was tested with) and the
referral flag at the threshold val chose. Inputs that cannot be read are listed with the
reason in ``failures.csv`` beside it; the others are still predicted, and the exit code is 1
when anything failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from mtcsnn.run.cli import EXAMPLE_CKPT, command

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = f"python -m mtcsnn.predict ckpt_path={EXAMPLE_CKPT} inputs=[photo.jpg,more_photos/]"


def predict(cfg: DictConfig) -> tuple[list[list], list[tuple[str, str]]]:
    """Predict every readable input; returns the CSV rows and ``(input, reason)`` failures."""
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.inference.batch import pick_device, predict_inputs
    from mtcsnn.inference.images import input_list
    from mtcsnn.run.checkpoint import load_checkpoints, referral_of_models

    checkpoints = load_checkpoints(cfg.ckpt_path)  # several: an ensemble, averaged
    referral, temperature, no_threshold = referral_of_models(checkpoints, cfg.calibrated)
    if no_threshold:
        log.info("refer column left empty: %s", no_threshold)
    return predict_inputs(
        [ckpt.module for ckpt in checkpoints],
        input_list(cfg.inputs),
        checkpoints[0].image_size,
        pick_device(cfg.device),
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        referral=referral,
        temperature=temperature,
    )


def write_results(rows: list, failures: list[tuple[str, str]], output: Path) -> Path:
    """Both CSVs, always (a header alone where nothing was predicted or nothing failed), and
    ``INTENDED_USE.txt`` beside them: what these grades may and may not be used for."""
    from mtcsnn.inference.batch import FAILURE_HEADER, INTENDED_USE, PREDICTION_HEADER, csv_text
    from mtcsnn.run.files import write_text_atomic

    failures_path = output.with_name("failures.csv")
    write_text_atomic(output.with_name("INTENDED_USE.txt"), INTENDED_USE + "\n")
    write_text_atomic(failures_path, csv_text(FAILURE_HEADER, failures))
    write_text_atomic(output, csv_text(PREDICTION_HEADER, rows))
    return failures_path


@command("predict", EXAMPLE)
def main(cfg: DictConfig) -> None:
    from mtcsnn.inference.batch import INTENDED_USE
    from mtcsnn.inference.images import input_list

    rows, failures = predict(cfg)
    failures_path = write_results(rows, failures, Path(cfg.output))
    for name, reason in failures:
        log.warning("could not read or grade %s: %s", name, reason)
    if not rows:
        raise SystemExit(
            f"error: no image could be read and graded from inputs={input_list(cfg.inputs)}"
        )
    log.info("predicted %d images: %s", len(rows), cfg.output)
    log.info("%s", INTENDED_USE)
    if failures:
        raise SystemExit(
            f"error: {len(failures)} input(s) could not be read or graded; "
            f"listed in {failures_path}"
        )


if __name__ == "__main__":
    main()

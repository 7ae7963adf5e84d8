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

from mtcsnn.errors import ConfigError
from mtcsnn.run.cli import EXAMPLE_CKPT, command

log = logging.getLogger(__name__)

# the command line printed when a mandatory argument is missing
EXAMPLE = f"python -m mtcsnn.predict ckpt_path={EXAMPLE_CKPT} inputs=[photo.jpg,more_photos/]"


def predict(cfg: DictConfig) -> tuple[list[list], list[tuple[str, str]]]:
    """Predict every readable input; returns the CSV rows and ``(input, reason)`` failures."""
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.inference.batch import pick_device, predict_inputs
    from mtcsnn.inference.images import input_list
    from mtcsnn.run.checkpoint import load_checkpoints

    checkpoints = load_checkpoints(cfg.ckpt_path)  # several: an ensemble, averaged
    referral, temperature = referral_of_models(checkpoints, cfg.calibrated)
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


def referral_of_models(
    checkpoints: list, calibrated: bool
) -> tuple[tuple[int, float | None], float | None]:
    """The referral cut and threshold of the ``referable`` and ``refer`` columns, and the
    temperature of the probabilities (``calibrated=true``): what val chose for a single model.

    An ensemble, or a model tested before these were kept, gets the default cut and no
    threshold (its ``refer`` column stays empty, and a note says why); asking such a model for
    calibrated probabilities is an error.
    """
    if not isinstance(calibrated, bool):
        raise ConfigError("calibrated", calibrated, "it must be true or false")
    if len(checkpoints) > 1:
        if calibrated:
            raise ConfigError(
                "calibrated", True, "an ensemble has no temperature chosen on val; use false"
            )
        log.info(
            "refer column left empty: an ensemble's threshold is not chosen on val here "
            "(each member's was chosen for that member alone)"
        )
        return (2, None), None
    ckpt = checkpoints[0]
    if calibrated and ckpt.temperature is None:
        raise ConfigError(
            "calibrated", True, f"{ckpt.path} records no temperature chosen on val; use false"
        )
    if not ckpt.referral:
        log.info("refer column left empty: %s records no referral threshold", ckpt.path)
        return (2, None), ckpt.temperature if calibrated else None
    first = ckpt.referral[0]
    if calibrated:
        return (first.cut, first.scaled_threshold), ckpt.temperature
    return (first.cut, first.threshold), None


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

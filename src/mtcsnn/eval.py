"""``python -m mtcsnn.eval ckpt_path=...``: re-evaluate a checkpoint on val and test.

The data and model are rebuilt from the config saved in the checkpoint, so the numbers equal
those of the run that wrote it; ``metrics.json`` and ``test_predictions.csv`` go to the
output dir as in training.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mtcsnn.run.cli import EXAMPLE_CKPT, command

# the command line printed when a mandatory argument is missing
EXAMPLE = f"python -m mtcsnn.eval ckpt_path={EXAMPLE_CKPT}"


def evaluate(cfg: DictConfig) -> dict:
    """One checkpoint, or several (``ckpt_path=[a,b,...]``: an ensemble of their probabilities)."""
    # imported here, after the command line's checks (see mtcsnn.run.cli.command)
    from mtcsnn.run.checkpoint import load_checkpoints
    from mtcsnn.run.console import quiet_libraries
    from mtcsnn.run.files import versions
    from mtcsnn.run.training import (
        ensemble_results,
        evaluation_results,
        log_results,
        write_outputs,
    )

    start = time.perf_counter()
    quiet_libraries()
    checkpoints = load_checkpoints(cfg.ckpt_path)
    ckpt = checkpoints[0]
    data_cfg = ckpt.config.data  # an ensemble is tested on its first member's data
    if cfg.get("data_root") and "root" in data_cfg:
        with open_dict(data_cfg):
            data_cfg.root = str(cfg.data_root)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(data_cfg)
    predictions = None
    if len(checkpoints) == 1:
        results = evaluation_results(ckpt.module, datamodule, cfg.trainer)
    else:
        modules = [c.module for c in checkpoints]
        results, predictions = ensemble_results(modules, datamodule, cfg.trainer)
    results.update(
        best_epoch=ckpt.epoch if len(checkpoints) == 1 else None,
        best_checkpoint=str(ckpt.path.resolve()) if len(checkpoints) == 1 else None,
        checkpoints=[str(c.path.resolve()) for c in checkpoints],
        seed=ckpt.config.get("seed") if len(checkpoints) == 1 else None,
        wall_time_s={"total": round(time.perf_counter() - start, 2)},
        versions=versions(),
        config=ckpt.module.run_config,
    )
    write_outputs(out_dir, ckpt.module, results, predictions)
    log_results(results, out_dir)
    return results


@command("eval", EXAMPLE)
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["test"]["auroc"]


if __name__ == "__main__":
    main()

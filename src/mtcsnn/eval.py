"""``python -m mtcsnn.eval ckpt_path=...``: re-evaluate a checkpoint on val and test.

The data and model are rebuilt from the config saved in the checkpoint, so the numbers equal
those of the run that wrote it; ``metrics.json`` and ``test_predictions.csv`` go to the
output dir as in training.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from mtcsnn.checkpoint import load_checkpoint
from mtcsnn.console import quiet_libraries
from mtcsnn.errors import MTCSNNError
from mtcsnn.outputs import versions
from mtcsnn.overrides import missing_arguments_message
from mtcsnn.score_decoding import decode_if_trained
from mtcsnn.train import CONFIG_PATH, log_results, validate_and_test, write_outputs

# the command line printed when a mandatory argument is missing
EXAMPLE = "python -m mtcsnn.eval ckpt_path=logs/train/runs/<date>_<time>/checkpoints/epoch_012.ckpt"


def evaluate(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    quiet_libraries()
    ckpt = load_checkpoint(cfg.ckpt_path)
    data_cfg = ckpt.config.data
    if cfg.get("data_root") and "root" in data_cfg:
        with open_dict(data_cfg):
            data_cfg.root = str(cfg.data_root)
    datamodule = instantiate(data_cfg)
    val, test = validate_and_test(ckpt.module, datamodule, cfg.trainer)
    out_dir = Path(cfg.paths.output_dir)
    results = {
        "val": val,
        "test": test,
        "test_confusion": ckpt.module.test_confusion,
        "best_epoch": ckpt.epoch,
        "best_checkpoint": str(ckpt.path.resolve()),
        "seed": ckpt.config.get("seed"),
        "wall_time_s": {"total": round(time.perf_counter() - start, 2)},
        "versions": versions(),
        "config": ckpt.module.run_config,
    }
    decoded = decode_if_trained(ckpt.module, datamodule.splits)
    if decoded is not None:
        results["score_decoding"] = decoded
    write_outputs(out_dir, ckpt.module, results)
    log_results(results, out_dir)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> float:
    missing = missing_arguments_message(cfg, EXAMPLE)
    if missing:
        raise SystemExit(f"error: {missing}")
    try:
        return evaluate(cfg)["test"]["auroc"]
    except MTCSNNError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

"""Weights & Biases around a run: offline when there is no login, plots and tables at the end."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger

from mtcsnn.run.files import write_text_atomic

log = logging.getLogger(__name__)
NUM_EXAMPLES = 16  # test images shown in the W&B table


def uses_wandb(cfg: DictConfig) -> bool:
    loggers = cfg.get("logger") or {}
    return any(node and is_wandb(node) for node in loggers.values())


def is_wandb(node: DictConfig) -> bool:
    return str(node.get("_target_", "")).endswith("WandbLogger")


RUN_ID_FILE = "wandb_run_id"


def wandb_identity(output_dir: Path, resume: bool) -> dict[str, str]:
    """The W&B run id of this output dir: kept in it, so a resumed run continues its W&B run."""
    path = Path(output_dir) / RUN_ID_FILE
    if resume and path.exists():
        return {"id": path.read_text().strip(), "resume": "allow"}
    if "LOCAL_RANK" in os.environ and path.exists():
        return {"id": path.read_text().strip()}  # a DDP process of the run rank 0 started
    run_id = secrets.token_hex(4)
    write_text_atomic(path, run_id + "\n")
    return {"id": run_id}


def has_wandb_login() -> bool:
    """An API key in the environment or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


# a W&B data folder the user chose; else offline runs keep their staged files themselves
_USER_DATA_DIR = os.environ.get("WANDB_DATA_DIR")


def prepare_wandb(output_dir: Path) -> None:
    """Log offline, never prompt, when the user has not logged in; ``WANDB_MODE`` always wins.

    W&B stores the images of a logged table in a "run_table" artifact whose files it stages in
    ``~/.local/share/wandb`` (the run's own table JSON names only their type, "Image"); offline,
    ``wandb sync`` uploads them from there. The staging folder is put inside the run's folder,
    so the run carries its images to wherever it is synced.
    """
    if not os.environ.get("WANDB_MODE") and not has_wandb_login():
        os.environ["WANDB_MODE"] = "offline"
        log.warning(
            "W&B: no API key or login found, logging offline; sync later with: wandb sync %s",
            output_dir / "wandb" / "offline-run-*",
        )
    if os.environ.get("WANDB_MODE") == "offline" and _USER_DATA_DIR is None:
        os.environ["WANDB_DATA_DIR"] = str(output_dir / "wandb" / "data")


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger, W&B's console lines cut to what a person acts on.

    Offline, W&B prints some 35 lines (its version, advice, the run's history and summary as
    bar charts): it is made silent, and :func:`finish_wandb` names the run's folder and the
    command that uploads it. Online it is made quiet: it still names the run's page. A user's
    own ``WANDB_SILENT`` / ``WANDB_QUIET``, or ``settings`` given here, win.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning always passes it, and W&B warns that it has no effect
            self._wandb_init.pop("anonymous", None)
        chosen = any(os.environ.get(name) for name in ("WANDB_SILENT", "WANDB_QUIET"))
        if "settings" not in self._wandb_init and not chosen:
            import wandb

            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun")
            quiet = {"silent": True} if offline else {"quiet": True}
            self._wandb_init["settings"] = wandb.Settings(**quiet)


def log_test_results(logger, model, datamodule, results: dict) -> None:
    """Test metrics in the run summary, confusion matrix and ROC plots, a table of test images."""
    import wandb

    run = logger.experiment
    run.summary.update({f"test/{k}": v for k, v in results["test"].items()})
    run.summary.update({"best_epoch_number": results["best_epoch_number"]})  # counted from 1
    predictions = model.test_predictions
    grades = predictions["grade"].tolist()
    probs = predictions["probs"]
    class_names = [f"grade {c}" for c in range(probs.shape[1])]
    images, _ = datamodule.splits["test"]
    table = wandb.Table(columns=["index", "image", "grade", "predicted", "p(predicted)", "score"])
    for i in range(min(NUM_EXAMPLES, len(grades))):
        index = int(predictions["index"][i])
        pred = int(probs[i].argmax())
        table.add_data(
            index,
            wandb.Image(images[index].permute(1, 2, 0).numpy()),
            grades[i],
            pred,
            round(float(probs[i, pred]), 4),
            round(float(predictions["score"][i]), 4),
        )
    run.log(
        {
            "test/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=grades, preds=probs.argmax(1).tolist(), class_names=class_names
            ),
            "test/roc": wandb.plot.roc_curve(grades, probs.to(torch.float64).numpy(), class_names),
            "test/examples": table,
        }
    )


def finish_wandb(failed: bool) -> None:
    """End the W&B run of this job, so each job of a multirun is its own run."""
    import wandb

    run = wandb.run
    if run is not None:
        offline = run.settings._offline
        folder = run.settings.sync_dir
        wandb.finish(exit_code=1 if failed else 0)
        if offline:
            log.info(
                "W&B: offline run written to %s; upload it with: wandb sync %s", folder, folder
            )

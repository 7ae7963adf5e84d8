"""Where the configs are, the OmegaConf resolvers they use, and flat views of a config.

Light on purpose: importing it loads no PyTorch. Importing it registers the resolvers, so
whatever composes a config (the command wrapper, ``hydra.main``, ``compose`` with
:data:`CONFIG_PATH`) has them; ``import mtcsnn`` alone loads neither Hydra nor OmegaConf.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> Path:
    """``conf/``: inside the installed package (a wheel), else at the top of the checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "conf"
    return installed if installed.is_dir() else package.parents[1] / "conf"


CONFIG_PATH = str(config_dir())


def epoch_fractions(max_epochs: int, fractions: list[float]) -> list[int]:
    """Epoch numbers at the given fractions of the run, e.g. (100, [0.5, 0.75]) -> [50, 75].

    Lets the learning-rate milestones follow ``trainer.max_epochs`` instead of being fixed numbers.
    """
    return [max(1, round(float(f) * int(max_epochs))) for f in fractions]


def run_group(task_name: str) -> str:
    """``<task_name>-<folder>``: the multirun folder in a sweep, so a sweep is one group."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    multirun = str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    folder = hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir
    return f"{task_name}-{Path(folder).name}"


def register_resolvers() -> None:
    """Register the resolvers the configs use (``${epoch_fractions:...}``, ...); idempotent."""
    from mtcsnn.grading import metric_mode  # which way a monitored metric improves

    resolvers = (
        ("epoch_fractions", epoch_fractions),
        ("run_group", run_group),
        ("metric_mode", metric_mode),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# every way to a config goes through this module (CONFIG_PATH), so it registers them
register_resolvers()


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"model": {"lr": 1}}`` -> ``{"model.lr": 1}``; lists become tuples (hashable)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


# Settings that cannot change what a run trains nor the numbers it reports: where files go,
# what is logged or shown, how many threads and loader workers do the work (the augmentation
# and the pairing draw in the main process), whether a run resumes and what it keeps on disk.
# A resume may differ in them (mtcsnn.run.run_dir) and the report does not tell configurations
# apart by them (mtcsnn.reporting.grouping). Everything else, callbacks included (early
# stopping, EMA, which checkpoint is kept), changes training and must match.
NOT_TRAINING_KEYS = frozenset(
    {
        "resume",
        "threads",
        # what is measured after training (robustness.csv), not what is trained
        "corruptions",
        "keep_training_state",
        "data.root",
        "data.num_workers",
        "data.download",
        "data.cache_dir",
        "data.eval_batch_size",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",
        # how often last.ckpt is written: a run resumed from any epoch end gives the same numbers
        "callbacks.last_checkpoint.every_n_epochs",
        # a record of every epoch's val predictions, and where it goes
        "callbacks.val_predictions.path",
    }
)
# whole sections (and the choice of their config file: `logger=wandb`)
# grading: how a trained model is scored (referral thresholds, cuts), never what is trained
NOT_TRAINING_SECTIONS = ("paths", "logger", "hydra", "grading")
# folders files are written to, wherever they appear (a checkpoint callback's dirpath)
NOT_TRAINING_SUFFIXES = (".dirpath", ".save_dir", "default_root_dir")


# values renamed since earlier runs, the same setting under either name: checkpoint file
# names counted from 1 came with a subclass of Lightning's callback, which keeps the same
# checkpoint (a run of an earlier version resumes, and is one configuration with a newer run)
RENAMED_VALUES = {
    "callbacks.model_checkpoint._target_": {
        "pytorch_lightning.callbacks.ModelCheckpoint": "mtcsnn.run.callbacks.EpochCheckpoint",
    },
}


def current_names(flat: dict, prefix: str = "") -> dict:
    """A flattened config with renamed values (``RENAMED_VALUES``) under their current name;
    ``prefix``: the keys' own (``config.`` in a report's settings)."""
    out = dict(flat)
    for key, renamed in RENAMED_VALUES.items():
        value = out.get(prefix + key)
        if isinstance(value, str) and value in renamed:
            out[prefix + key] = renamed[value]
    return out


def changes_training(key: str) -> bool:
    """Whether the setting ``key`` (``model.optimizer.lr``) can change what a run trains."""
    section = key.split(".", 1)[0]
    return not (
        key in NOT_TRAINING_KEYS
        or section in NOT_TRAINING_SECTIONS
        or section.startswith("hydra/")  # a choice of Hydra's own groups (hydra/launcher)
        or key.endswith(NOT_TRAINING_SUFFIXES)
    )

"""Where the configs are, the OmegaConf resolvers they use, and flat views of a config.

Light on purpose: importing it (as ``import mtcsnn`` does) loads no PyTorch.
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
    from mtcsnn.grading import metric_mode  # which way a monitored metric improves

    resolvers = (
        ("epoch_fractions", epoch_fractions),
        ("run_group", run_group),
        ("metric_mode", metric_mode),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


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

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mtcsnn.run.config import CONFIG_PATH  # (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTCSNN_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
# Absolute, so the notebooks (run by nbmake from notebooks/) and subprocesses find it too.
os.environ["MTCSNN_DATA_DIR"] = str(DATA_DIR)
REAL_NPZ = DATA_DIR / "retinamnist.npz"

# W&B must never reach the network or ask for a key in tests.
os.environ.setdefault("WANDB_MODE", "offline")

# pytest-xdist's workers share the cores: what a worker runs gets its share of the threads, as
# each job of the parallel launcher does, instead of every worker's commands using all cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def compose_command(
    config_name: str, overrides: list[str], output_dir: Path, log_dir: bool = False
) -> DictConfig:
    """A command's real config (``train``, ``eval``, ...) with overrides, as its task sees it,
    its output going to ``output_dir`` (and its log dir too, with ``log_dir``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if log_dir:
            cfg.paths.log_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a @hydra.main task: the hydra node is reached via HydraConfig
    return cfg


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The real train config with overrides, its output going to ``output_dir``."""
    return compose_command("train", overrides, output_dir, log_dir=True)


# Tiny CPU settings: a couple of epochs on a few synthetic images.
TINY_SYNTHETIC = ["data.num_train=40", "data.num_val=20", "data.num_test=20", "data.batch_size=16"]
TINY = [
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    def make(*overrides: str, data: str = "synthetic") -> DictConfig:
        data_overrides = [f"data={data}", *(TINY_SYNTHETIC if data == "synthetic" else [])]
        return compose_train([*data_overrides, *TINY, *overrides], tmp_path)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The best checkpoint of a one-epoch run on a few synthetic images.

    One run per worker serves every file: tests read it or copy it, never change it.
    """
    from mtcsnn.run.training import train

    out = tmp_path_factory.mktemp("run")
    train(compose_train(["data=synthetic", *TINY_SYNTHETIC, *TINY, "trainer.max_epochs=1"], out))
    GlobalHydra.instance().clear()
    (best,) = (out / "checkpoints").glob("epoch_*.ckpt")
    return best


@pytest.fixture(scope="session")
def second_checkpoint(tmp_path_factory) -> Path:
    """The tiny run with another seed: an ensemble's second, different member."""
    from mtcsnn.run.training import train

    out = tmp_path_factory.mktemp("second")
    overrides = ["data=synthetic", *TINY_SYNTHETIC, *TINY, "trainer.max_epochs=1", "seed=2"]
    train(compose_train(overrides, out))
    GlobalHydra.instance().clear()
    (best,) = (out / "checkpoints").glob("epoch_*.ckpt")
    return best


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_NPZ.exists():
        pytest.skip(f"real RetinaMNIST not found at {REAL_NPZ} (set MTCSNN_DATA_DIR to its folder)")
    return DATA_DIR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # the notebooks load the real data and train a short run in a subprocess: slow ones
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)

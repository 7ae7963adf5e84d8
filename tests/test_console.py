"""What the console shows: no hints meant for other setups."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run_with_the_reader_gone

SLURM_CHECK = """
import warnings, sys
warnings.simplefilter("always")
if sys.argv[1] == "quiet":
    from mtcsnn.run.console import quiet_libraries
    quiet_libraries()
from lightning_fabric.plugins.environments import SLURMEnvironment
SLURMEnvironment._validate_srun_used()
"""


def fake_srun(tmp_path: Path) -> dict[str, str]:
    """An environment with an ``srun`` on PATH, as on a machine with SLURM installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):  # not inside a SLURM job
        env.pop(name, None)
    return env


def test_lightnings_srun_hint_is_not_shown_on_a_machine_with_slurm(tmp_path):
    env = fake_srun(tmp_path)

    def stderr(mode: str) -> str:
        command = [sys.executable, "-c", SLURM_CHECK, mode]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stderr

    assert "srun" in stderr("plain")  # Lightning does give the hint here
    assert "srun" not in stderr("quiet")


@pytest.mark.parametrize("kind", ["rich", "tqdm"])
def test_the_progress_bar_counts_epochs_from_1(tmp_path, kind):
    """Lightning's bars say "Epoch 0" (rich: "Epoch 0/1") for the first epoch; ours "Epoch 1/2"."""
    import pytorch_lightning as pl
    import torch

    from mtcsnn.run.callbacks import EpochProgressBar, EpochRichProgressBar

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    seen: list[str] = []

    class Seen(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            bar = trainer.progress_bar_callback
            if kind == "tqdm":
                seen.append(bar.train_progress_bar.desc.rstrip(": "))  # tqdm adds ": "
            else:
                seen.append(bar.progress.tasks[bar.train_progress_bar_id].description.strip())

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)))
    bar = EpochProgressBar() if kind == "tqdm" else EpochRichProgressBar()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[bar, Seen()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        limit_train_batches=1,
    )
    trainer.fit(Tiny(), data)
    assert seen == ["Epoch 1/2", "Epoch 2/2"]


@pytest.mark.slow
def test_a_console_whose_reader_leaves_stops_printing_and_the_run_goes_on(tmp_path):
    """``python -m mtcsnn.train | true``: the reader is gone before the first line."""
    run_dir = tmp_path / "run"
    result = run_with_the_reader_gone(
        "mtcsnn.train",
        *("data=synthetic", "data.num_train=32", "data.num_val=20", "data.num_test=20"),
        *("data.batch_size=16", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Logging error" not in result.stderr and "BrokenPipe" not in result.stderr
    assert (run_dir / "metrics.json").is_file()
    assert "test: auroc" in (run_dir / "train.log").read_text()  # the lines kept there

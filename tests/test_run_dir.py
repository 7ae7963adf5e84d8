"""One run per output dir: a second run there is refused, a resume must continue the same run."""

from __future__ import annotations

import pytest
import yaml
from helpers.cli import ONE_SMALL_EPOCH, run_train

from mtcsnn.run.run_dir import config_differences, hold, release

pytestmark = pytest.mark.slow

SMALL = ["data=synthetic", "data.num_train=32", "data.batch_size=16", *ONE_SMALL_EPOCH]


def one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.fixture(scope="module")
def released_run(tmp_path_factory) -> dict:
    """A run refused in a held dir, then, the dir released, run there (seed 3) to its end.

    What the refused run left is noted before the second run; the two tests below share the
    one training.
    """
    run_dir = tmp_path_factory.mktemp("released") / "run"
    hold(run_dir)  # as a running run holds it
    try:
        refused = run_train(*SMALL, "seed=3", f"hydra.run.dir={run_dir}")
    finally:
        release(run_dir)
    left = [
        name for name in ("metrics.json", "failed.json", "checkpoints") if (run_dir / name).exists()
    ]
    # released (as when the holder dies): the dir can be used again
    finished = run_train(*SMALL, "seed=3", f"hydra.run.dir={run_dir}")
    return {"refused": refused, "left": left, "finished": finished, "run_dir": run_dir}


def test_a_second_run_in_a_held_dir_is_refused_and_writes_nothing(released_run):
    assert "is in use by another run" in one_error_line(released_run["refused"])
    assert released_run["left"] == []  # no metrics.json, failed.json nor checkpoints
    assert released_run["finished"].returncode == 0


def test_resume_with_other_settings_is_refused_and_keeps_the_original_overrides(released_run):
    run_dir = released_run["run_dir"]
    assert released_run["finished"].returncode == 0
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    metrics = (run_dir / "metrics.json").read_text()
    result = run_train(*SMALL, "seed=4", "loss.lam=2", f"hydra.run.dir={run_dir}", "resume=true")
    line = one_error_line(result)
    assert "seed: 3 -> 4" in line and "loss.lam: 0.5 -> 2" in line
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides
    assert (run_dir / "metrics.json").read_text() == metrics
    # the same settings, and a logger or progress bar changed, are the same run
    progress = "trainer.enable_progress_bar=true"
    same = run_train(*SMALL, "seed=3", progress, f"hydra.run.dir={run_dir}", "resume=true")
    assert same.returncode == 0 and "kept as it is" in same.stdout + same.stderr
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides
    resumed = run_dir / ".hydra" / "resumed" / "overrides.yaml"
    assert "resume=true" in yaml.safe_load(resumed.read_text())


def test_resume_of_a_folder_where_nothing_started_is_refused(tmp_path):
    run_dir = tmp_path / "typo"
    line = one_error_line(run_train(*SMALL, f"hydra.run.dir={run_dir}", "resume=true"))
    assert "nothing was started" in line
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


def test_a_resumed_sweep_starts_the_jobs_that_never_started(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train("--multirun", *SMALL, "seed=1,2", f"hydra.sweep.dir={sweep}", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").exists()


def test_config_differences_ignore_what_cannot_change_the_numbers():
    saved = {"seed": 1, "logger": {"csv": {}}, "threads": None, "model": {"lr": 0.1}}
    now = {"seed": 1, "logger": {"wandb": {}}, "threads": 2, "model": {"lr": 0.2}, "resume": True}
    assert config_differences(saved, now) == ["model.lr: 0.1 -> 0.2"]

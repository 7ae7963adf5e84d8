"""Files and folders without permission: one ``error:`` line, never a traceback.

Run as a user would meet them: each command in a subprocess. As root (CI), permissions do not
stop reading or writing, so the commands run without root's capabilities (``setpriv``), which
makes the kernel check permissions as for anyone else.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

DROP_PRIVILEGES = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def unprivileged(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        prefix = DROP_PRIVILEGES
    return subprocess.run(
        [*prefix, sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        timeout=600,
    )


@pytest.fixture
def locked(tmp_path):
    """``locked(path)`` takes every permission away from ``path``; given back afterwards."""
    paths: list[Path] = []

    def lock(path: Path) -> Path:
        path.chmod(0)
        paths.append(path)
        return path

    yield lock
    for path in paths:
        path.chmod(stat.S_IRWXU)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def small_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("verify_md5", ["true", "false"])
def test_a_data_file_without_read_permission(tmp_path, locked, verify_md5):
    data = small_npz(tmp_path / "data" / "retinamnist.npz")
    locked(data)
    result = unprivileged(
        "mtcsnn.train",
        f"data.verify_md5={verify_md5}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"MTCSNN_DATA_DIR": str(data.parent)},
    )
    assert one_error_line(result) == f"error: cannot read {data}: Permission denied"


def test_a_data_folder_without_permission(tmp_path, locked):
    data = small_npz(tmp_path / "data" / "retinamnist.npz")
    locked(data.parent)
    result = unprivileged(
        "mtcsnn.train",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"MTCSNN_DATA_DIR": str(data.parent)},
    )
    assert one_error_line(result) == f"error: cannot read {data}: Permission denied"


def test_an_output_folder_without_write_permission(tmp_path, locked):
    parent = tmp_path / "results"
    parent.mkdir()
    locked(parent)
    run = unprivileged("mtcsnn.train", "data=synthetic", f"hydra.run.dir={parent / 'run'}")
    assert one_error_line(run) == (
        f"error: cannot create the output folder {parent / 'run'}: no write permission in {parent}"
    )


def test_a_checkpoint_without_read_permission(tiny_checkpoint, tmp_path, locked):
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    locked(ckpt)
    # the tools share load_checkpoint: eval and predict stand for explain and export
    for command, *args in (("mtcsnn.eval",), ("mtcsnn.predict", "inputs=[x.png]")):
        result = unprivileged(
            command, f"ckpt_path={ckpt}", *args, f"hydra.run.dir={tmp_path / 'out'}"
        )
        assert one_error_line(result) == f"error: cannot read {ckpt}: Permission denied"


def test_unreadable_images_and_folders_fail_alone(tiny_checkpoint, tmp_path, locked):
    photos = tmp_path / "photos"
    for name in ("ok/a.png", "ok/b.png", "closed/c.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).save(photos / name)
    locked(photos / "ok" / "b.png")
    locked(photos / "closed")
    out = tmp_path / "out"
    result = unprivileged(
        "mtcsnn.predict",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{photos}]",
        f"output={out}/p.csv",
    )
    assert one_error_line(result).startswith("error: 2 input(s) could not be read")
    with open(out / "p.csv", newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [str(photos / "ok" / "a.png")]
    with open(out / "failures.csv", newline="") as f:
        failed = {row["input"]: row["reason"] for row in csv.DictReader(f)}
    assert failed == {
        str(photos / "closed"): "cannot list the folder (Permission denied)",
        str(photos / "ok" / "b.png"): f"PermissionError: [Errno 13] Permission denied: "
        f"'{photos / 'ok' / 'b.png'}'",
    }


def test_predictions_into_a_folder_without_write_permission(tiny_checkpoint, tmp_path, locked):
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(photo)
    closed = tmp_path / "closed"
    closed.mkdir()
    locked(closed)
    result = unprivileged(
        "mtcsnn.predict",
        f"ckpt_path={tiny_checkpoint}",
        f"inputs=[{photo}]",
        f"output={closed}/p.csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    line = one_error_line(result)
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(closed))}/\S+: Permission denied", line
    )

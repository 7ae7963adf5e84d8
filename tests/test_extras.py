"""Features of an optional extra, asked for where it is not installed: one line saying what to
install. Simulated by a process in which importing those packages fails, as without them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# None in sys.modules: `import x` raises ModuleNotFoundError and importlib.util.find_spec("x")
# returns None, as for a package that is not installed
WITHOUT = """
import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without(packages: str, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, packages, module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
        timeout=600,
    )


@pytest.mark.parametrize(
    ("packages", "overrides", "expected"),
    [
        (["wandb"], ["logger=wandb"], "logger=wandb needs wandb"),
        (["wandb"], ["logger=csv_wandb"], "pip install 'mtcsnn[wandb]'"),
        (
            ["tensorboard", "tensorboardX"],
            ["logger=tensorboard"],
            "logger=tensorboard needs tensorboard or tensorboardX, which is not installed: "
            "pip install 'mtcsnn[tensorboard]'",
        ),
        (["optuna"], ["hparams_search=resnet18_optuna"], "mtcsnn[search]"),
    ],
)
def test_the_config_check_names_the_missing_extra(
    monkeypatch, tmp_path, packages, overrides, expected
):
    """Checked before anything is built, by the check every run starts with."""
    from conftest import compose_train
    from hydra.core.global_hydra import GlobalHydra

    from mtcsnn.errors import MissingExtraError
    from mtcsnn.run.checks import check_config

    cfg = compose_train(["data=synthetic", *overrides], tmp_path)
    GlobalHydra.instance().clear()
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError) as err:
        check_config(cfg)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("packages", "module", "args", "expected"),
    [
        ("wandb", "mtcsnn.train", ["data=synthetic", "logger=wandb"], "mtcsnn[wandb]"),
        ("captum", "mtcsnn.explain", ["ckpt_path=x.ckpt", "inputs=[a.png]"], "mtcsnn[explain]"),
        ("onnx", "mtcsnn.export", ["CKPT"], "format=onnx needs onnx or onnxscript"),
    ],
)
@pytest.mark.slow
def test_a_missing_extra_is_one_line_with_the_install_command(
    tiny_checkpoint, tmp_path, packages, module, args, expected
):
    args = [f"ckpt_path={tiny_checkpoint}" if a == "CKPT" else a for a in args]
    result = run_without(packages, module, *args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_the_core_trains_without_any_extra(tmp_path):
    result = run_without(
        "wandb,optuna,captum,onnx,onnxscript,onnxruntime,tensorboard,tensorboardX,submitit",
        "mtcsnn.train",
        "data=synthetic",
        "data.num_train=16",
        "data.num_val=10",
        "data.num_test=10",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "metrics.json").exists()

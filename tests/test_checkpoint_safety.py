"""A checkpoint is a file from someone else: rebuilding its model never runs code of its choice.

Each crafted checkpoint hides a ``_target_`` (or something else Hydra would act on) in one place
of the saved config; the payload would write a marker file or import a module written beside
it. A checkpoint with a model spec is rebuilt from the spec alone, so its saved config is inert
data; an old checkpoint (a saved config and no spec) must be refused with the key and the
target. Either way nothing may be written or imported.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_module
from PIL import Image

from mtcsnn.run.checkpoint import SAFE_TARGETS, CheckpointError, load_checkpoint

CONF = Path(__file__).resolve().parents[1] / "conf"


def payloads(marker: Path, module_file: Path) -> dict[str, tuple[str, object]]:
    """Where a target can hide: (dotted place in the saved config, the value put there)."""
    # shutil.copyfile and os.makedirs are outside Hydra's own blocklist: they ran on the old code
    write = {"_target_": "shutil.copyfile", "_args_": [str(module_file), str(marker)]}
    shell = {"_target_": "os.makedirs", "_args_": [str(marker)]}
    imported = {"_target_": "runpy.run_path", "_args_": [str(module_file)]}
    return {
        "loss": ("loss", write),
        "model": ("model", imported),
        "net": ("model.net", shell),
        "optimizer": ("model.optimizer", {**write, "_partial_": False}),
        "scheduler": ("model.scheduler", {"_target_": "builtins.exec", "_partial_": True}),
        "data": ("data", {"_target_": "os.makedirs", "_args_": [str(marker)]}),
        "nested value": ("model.net.backbone", shell),
        "inside _args_": (
            "loss",
            {"_target_": "mtcsnn.losses.MultiTaskLoss", "_args_": [write]},
        ),
        "inside a list": ("model.net.channels_last", [0, [shell]]),
        "not a string": ("loss._target_", {"_target_": "builtins.exec"}),
        "interpolation": ("loss.lam", "${oc.env:HOME}"),
        "unknown hydra key": ("loss._set_", "x"),
    }


def set_at(config: dict, place: str, value: object) -> None:
    *parents, last = place.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value


def craft(source: Path, place: str, value: object, out: Path, old: bool = True) -> Path:
    """``source`` with ``value`` at ``place`` of its saved config; ``old``: without its spec,
    as checkpoints were written before they held one."""
    state = torch.load(source, weights_only=True)
    state["mtcsnn_config"] = copy.deepcopy(state["mtcsnn_config"])
    set_at(state["mtcsnn_config"], place, value)
    if old:
        del state["mtcsnn_spec"]
    torch.save(state, out)
    return out


@pytest.fixture
def bait(tmp_path):
    """The marker a payload would write, and a module that would write it when imported."""
    marker = tmp_path / "pwned"
    module_file = tmp_path / "evil_module.py"
    module_file.write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    return marker, module_file


@pytest.mark.parametrize("case", list(payloads(Path("m"), Path("f"))))
def test_a_crafted_checkpoint_is_refused_before_anything_is_built(
    tiny_checkpoint, tmp_path, bait, case
):
    marker, module_file = bait
    place, value = payloads(marker, module_file)[case]
    crafted = craft(tiny_checkpoint, place, value, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match="refused to rebuild the model") as err:
        load_checkpoint(crafted)
    assert place.split(".")[0] in str(err.value)
    assert not marker.exists()
    assert "evil_module" not in sys.modules


@pytest.mark.parametrize("case", list(payloads(Path("m"), Path("f"))))
def test_a_payload_in_the_saved_config_of_a_checkpoint_with_a_spec_is_inert(
    tiny_checkpoint, tmp_path, bait, case
):
    marker, module_file = bait
    place, value = payloads(marker, module_file)[case]
    crafted = craft(tiny_checkpoint, place, value, tmp_path / "crafted.ckpt", old=False)
    loaded = load_checkpoint(crafted)
    expected = load_checkpoint(tiny_checkpoint)
    assert loaded.spec == expected.spec
    assert not marker.exists()
    assert "evil_module" not in sys.modules


def test_the_real_checkpoint_still_loads(tiny_checkpoint):
    assert load_checkpoint(tiny_checkpoint).module is not None


def test_every_target_the_configs_offer_for_model_loss_and_data_is_allowed():
    import yaml

    def targets(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_":
                    yield value
                yield from targets(value)

    for group in ("model", "loss", "data"):
        for path in (CONF / group).glob("*.yaml"):
            for target in targets(yaml.safe_load(path.read_text())):
                assert target in SAFE_TARGETS, f"{path}: add {target} to SAFE_TARGETS"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "eval", "explain"])
def test_the_commands_refuse_a_crafted_checkpoint_in_one_line(
    tiny_checkpoint, tmp_path, bait, command
):
    marker, module_file = bait
    crafted = craft(
        tiny_checkpoint,
        "loss",
        {"_target_": "shutil.copyfile", "_args_": [str(module_file), str(marker)]},
        tmp_path / "crafted.ckpt",
        old=True,
    )
    image = tmp_path / "eye.png"
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(image)
    args = [f"ckpt_path={crafted}", f"hydra.run.dir={tmp_path / 'out'}"]
    if command != "eval":
        args.append(f"inputs=[{image}]")
    result = run_module(f"mtcsnn.{command}", *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "loss._target_='shutil.copyfile'" in line
    assert not marker.exists()

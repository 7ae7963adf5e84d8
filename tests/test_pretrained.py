"""Initial weights: ImageNet through torchvision's API, a state_dict file, another run."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import TINY, TINY_SYNTHETIC, compose_train
from helpers.cli import run_train
from hydra.core.global_hydra import GlobalHydra

from mtcsnn.models import SiameseResNet
from mtcsnn.models.siamese_resnet import WeightsError
from mtcsnn.run.checkpoint import load_checkpoint


def torchvision_weights(path, backbone=torchvision.models.resnet18, seed=3):
    torch.manual_seed(seed)
    state = backbone(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_a_weights_file_initialises_the_backbone(tmp_path):
    state = torchvision_weights(tmp_path / "r18.pt")
    net = SiameseResNet("resnet18", weights=str(tmp_path / "r18.pt"))
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    fresh = SiameseResNet("resnet18")
    assert not torch.equal(fresh.backbone.conv1.weight, net.backbone.conv1.weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet34"}, "does not fit the ResNet: missing layer1.2"),
        (
            {"stem": "cifar"},
            "conv1.weight has shape (64, 3, 7, 7), this network's has (64, 3, 3, 3)",
        ),
    ],
)
def test_a_weights_file_of_another_network_is_refused(tmp_path, kwargs, message):
    torchvision_weights(tmp_path / "r18.pt")
    with pytest.raises(WeightsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SiameseResNet(**{"backbone": "resnet18", **kwargs}, weights=str(tmp_path / "r18.pt"))


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not torch")
    with pytest.raises(WeightsError, match="cannot load weights from"):
        SiameseResNet(weights=str(tmp_path / "x.pt"))


def test_imagenet_goes_through_torchvisions_weights_api(monkeypatch, tmp_path):
    """No download here: torchvision's own weights object is asked, and answers from a file."""
    state = torchvision_weights(tmp_path / "r18.pt", seed=5)
    asked = []

    def from_cache(self, *args, **kwargs):
        asked.append(self)
        return state

    weights_class = type(torchvision.models.ResNet18_Weights.DEFAULT)
    monkeypatch.setattr(weights_class, "get_state_dict", from_cache)
    net = SiameseResNet("resnet18", weights="imagenet")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(net.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_imagenet_without_network_is_one_clear_error(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(
        type(torchvision.models.ResNet18_Weights.DEFAULT), "get_state_dict", offline
    )
    with pytest.raises(WeightsError, match="cannot get the ImageNet weights of resnet18"):
        SiameseResNet("resnet18", weights="imagenet")


def test_a_checkpoint_loads_without_its_initial_weights_file(tmp_path):
    torchvision_weights(tmp_path / "r18.pt")
    from mtcsnn.run.training import train

    out = tmp_path / "run"
    cfg = compose_train(
        ["data=synthetic", *TINY_SYNTHETIC, *TINY, "trainer.max_epochs=1"]
        + [f"model.net.weights={tmp_path / 'r18.pt'}"],
        out,
    )
    train(cfg)
    GlobalHydra.instance().clear()
    (tmp_path / "r18.pt").unlink()  # gone: the checkpoint holds the weights
    (best,) = (out / "checkpoints").glob("epoch_*.ckpt")
    loaded = load_checkpoint(best)  # rebuilt from its spec: no initial weights are read
    assert loaded.spec.backbone == "resnet18" and loaded.module is not None


@pytest.mark.slow
def test_init_from_starts_from_another_runs_weights(tiny_checkpoint, tmp_path):
    # lr 0: the new run's convolutions stay exactly what it started from
    result = run_train(
        "data=synthetic",
        *TINY_SYNTHETIC,
        "trainer.max_epochs=1",
        "model.optimizer.lr=0",
        f"init_from={tiny_checkpoint}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (best,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    start = load_checkpoint(tiny_checkpoint).module.net.backbone.conv1.weight
    assert torch.equal(load_checkpoint(best).module.net.backbone.conv1.weight, start)


@pytest.mark.slow
def test_init_from_another_network_is_one_line(tiny_checkpoint, tmp_path):
    result = run_train(
        "data=synthetic",
        "model=resnet34",
        f"init_from={tiny_checkpoint}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: init_from={tiny_checkpoint}: its network differs from this run's")
    )

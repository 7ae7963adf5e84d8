from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from mtcsnn.errors import ConfigError
from mtcsnn.models import MTCSNNModule
from mtcsnn.run.checks import check_config
from mtcsnn.run.config import CONFIG_PATH

LOSSES = sorted(p.stem for p in (Path(CONFIG_PATH) / "loss").glob("*.yaml"))


def test_loss_configs_are_all_here():
    assert LOSSES == ["ce", "coral", "corn", "mtcsnn", "regression"]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model", ["resnet18", "resnet34", "resnet50"])
def test_every_model_and_loss_composes_and_builds(tiny_cfg, model, loss):
    cfg = tiny_cfg(f"model={model}", f"loss={loss}")
    check_config(cfg)
    module = instantiate(cfg.model, loss=instantiate(cfg.loss))
    assert isinstance(module, MTCSNNModule)
    assert module.net.backbone is not None
    assert cfg.model.net.backbone == model
    a, b = torch.rand(2, 3, 28, 28), torch.rand(2, 3, 28, 28)
    out_a, out_b = module.net.forward_pair(a, b)
    terms = module.loss(out_a, out_b, torch.tensor([0, 4]), torch.tensor([1, 2]))
    assert torch.isfinite(terms["loss"])
    assert ("reg" in terms) == (loss == "mtcsnn")
    probs = module.probabilities(out_a)
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("data", ["retinamnist", "synthetic"])
def test_data_configs_compose(tiny_cfg, data, tmp_path):
    cfg = tiny_cfg(f"data.root={tmp_path}" if data == "retinamnist" else "seed=3", data=data)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    assert datamodule.seed == cfg.seed


def test_smoke_experiment_composes(tiny_cfg):
    cfg = tiny_cfg("experiment=smoke")
    assert cfg.data._target_.endswith("SyntheticDataModule")
    assert cfg.task_name == "smoke"


def test_lr_milestones_follow_max_epochs(tiny_cfg):
    assert list(tiny_cfg("trainer.max_epochs=100").model.scheduler.milestones) == [50, 75]
    assert list(tiny_cfg("trainer.max_epochs=8").model.scheduler.milestones) == [4, 6]


def test_defaults_follow_the_medmnist_recipe(tiny_cfg, tmp_path):
    from hydra import compose, initialize_config_dir

    from mtcsnn.run.config import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train")
    assert cfg.trainer.max_epochs == 100
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.data.batch_size == 128
    assert cfg.loss.lam == 0.5  # the default weight of the severity term
    assert cfg.callbacks.model_checkpoint.monitor == "val/auroc"
    # on top of it, the recipe val chose over 5 seeds (docs: Results)
    assert cfg.data.augment == "strong" and cfg.model.net.dropout == 0.3


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("model.net.backbone=resnet19", "model.net.backbone", "resnet18, resnet34, resnet50"),
        ("model.net.stem=deep", "model.net.stem", "imagenet, cifar"),
        ("loss.lam=-0.5", "loss.lam", ">= 0"),
        ("loss.difference=squared", "loss.difference", "absolute, signed"),
        ("data.batch_size=7", "data.batch_size", "even number"),
        ("data.batch_size=0", "data.batch_size", "even number"),
        ("data.size=32", "data.size", "28, 64, 128, 224"),
        ("optimized_metric=val/aurc", "optimized_metric", "val/auroc, val/acc"),
        ("optimized_metric=val/recall", "optimized_metric", "val/recall_<grade>"),
        (
            "optimized_metric=val/loss callbacks.model_checkpoint.mode=max",
            "callbacks.model_checkpoint.mode",
            "val/loss is better lower: use min",
        ),
        (
            "callbacks.epoch_log.mode=min",
            "callbacks.epoch_log.mode",
            "val/auroc is better higher: use max",
        ),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tiny_cfg, override, key, hint):
    cfg = tiny_cfg(*override.split(), data="retinamnist")
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert key in str(info.value) and hint in str(info.value)


@pytest.mark.parametrize(
    ("experiment", "params"),
    [
        ("paper_table", {"model": "resnet18,resnet34,resnet50", "loss": "ce,mtcsnn"}),
        ("lambda_sweep", {"loss.lam": "0,0.1,0.25,0.5,1,2"}),
        ("ordinal_ablation", {"loss": "ce,mtcsnn,coral,corn,regression"}),
    ],
)
def test_experiment_sweeps_compose(tiny_cfg, experiment, params):
    cfg = tiny_cfg(f"experiment={experiment}")
    hydra_cfg = HydraConfig.get()
    assert str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    sweep = hydra_cfg.sweeper.params
    for key, value in params.items():
        assert sweep[key] == value
    assert len(str(sweep.seed).split(",")) >= 5
    assert cfg.task_name == experiment


@pytest.mark.parametrize(
    ("launcher", "target"),
    [("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")],
)
def test_launcher_configs_compose(launcher, target):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mtcsnn.run.config import CONFIG_PATH

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"hydra/launcher={launcher}", "experiment=paper_table"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.sweeper.params.seed == "1,2,3,4,5"


@pytest.mark.parametrize(
    ("metric", "mode"),
    [("val/auroc", "max"), ("val/loss", "min"), ("val/mae", "min"), ("val/kappa", "max")],
)
def test_the_checkpoint_and_its_watchers_follow_the_metric_the_way_it_improves(
    tiny_cfg, metric, mode
):
    cfg = tiny_cfg(f"optimized_metric={metric}", "callbacks=early_stopping")
    check_config(cfg)
    for name in ("model_checkpoint", "epoch_log", "early_stopping"):
        assert cfg.callbacks[name].monitor == metric and cfg.callbacks[name].mode == mode

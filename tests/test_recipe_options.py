"""The recipe's optimiser, schedule and weight averaging, each a config choice."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_SYNTHETIC, compose_train
from hydra.core.global_hydra import GlobalHydra

from mtcsnn.run.checkpoint import SAFE_TARGETS, build_module
from mtcsnn.run.config import CONFIG_PATH
from mtcsnn.run.training import train

OPTIMIZERS = sorted(p.stem for p in (Path(CONFIG_PATH) / "model" / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted(p.stem for p in (Path(CONFIG_PATH) / "model" / "scheduler").glob("*.yaml"))
SMALL = ["data=synthetic", *TINY_SYNTHETIC, *TINY]


def test_the_offered_choices_are_all_here():
    assert OPTIMIZERS == ["adam", "adamw", "sgd"]
    assert SCHEDULERS == ["constant", "cosine", "exponential", "multistep"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_each_optimiser_and_schedule_builds_and_is_safe_to_load(
    tiny_cfg, model, optimizer, scheduler
):
    cfg = tiny_cfg(
        f"model={model}",
        f"model/optimizer={optimizer}",
        f"model/scheduler={scheduler}",
        "trainer.max_epochs=20",
    )
    module = build_module(cfg)
    configured = module.configure_optimizers()
    if scheduler == "constant":
        assert isinstance(configured, torch.optim.Optimizer)
        opt, lrs = configured, []
    else:
        opt, sched = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        assert cfg.model.scheduler._target_ in SAFE_TARGETS
        assert type(sched).__name__ == cfg.model.scheduler._target_.rsplit(".", 1)[1]
        start = opt.param_groups[0]["lr"]
        lrs = []
        for _ in range(20):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        # every schedule decays by the run's end, and only downwards
        assert lrs[-1] < start and all(b <= a + 1e-12 for a, b in itertools.pairwise([start, *lrs]))
    assert cfg.model.optimizer._target_ in SAFE_TARGETS
    assert type(opt).__name__ == cfg.model.optimizer._target_.rsplit(".", 1)[1]
    assert opt.param_groups[0]["lr"] <= cfg.model.optimizer.lr
    # the backbone stays the model's own; only the training recipe changed
    assert cfg.model.net.backbone == model


def test_cosine_reaches_eta_min_at_the_last_epoch(tiny_cfg):
    cfg = tiny_cfg("model/scheduler=cosine", "trainer.max_epochs=7")
    configured = build_module(cfg).configure_optimizers()
    opt, sched = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    for _ in range(7):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_ema_keeps_the_averaged_weights_and_decay_zero_is_the_plain_run(tmp_path):
    base = [*SMALL, "trainer.max_epochs=3", "seed=5"]
    plain = train(compose_train(base, tmp_path / "plain"))
    no_average = train(
        compose_train([*base, "callbacks=ema", "callbacks.ema.decay=0.0"], tmp_path / "ema0")
    )
    averaged = train(
        compose_train([*base, "callbacks=ema", "callbacks.ema.decay=0.9"], tmp_path / "ema9")
    )
    GlobalHydra.instance().clear()
    # decay 0 keeps only the latest weights: the plain run, step for step
    assert no_average["val"] == plain["val"] and no_average["test"] == plain["test"]
    w_plain, w_ema0, w_ema9 = (weights(tmp_path / n) for n in ("plain", "ema0", "ema9"))
    assert all(torch.equal(w_plain[k], w_ema0[k]) for k in w_plain)
    # with averaging, what val chose, what was kept and what was tested is the average
    float_keys = [k for k, v in w_plain.items() if v.is_floating_point()]
    assert any(not torch.allclose(w_plain[k], w_ema9[k]) for k in float_keys)
    assert averaged["config"]["callbacks"]["ema"]["decay"] == 0.9
    # a finished run keeps the weights only, not the training-time copy beside them
    (ckpt,) = (tmp_path / "ema9" / "checkpoints").glob("epoch_*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "current_model_state" not in state and "averaging_state" not in state

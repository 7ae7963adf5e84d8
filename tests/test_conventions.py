"""What users of lightning-hydra-template expect: debug runs kept apart, early stopping,
TensorBoard."""

from __future__ import annotations

import json

from conftest import TINY, TINY_SYNTHETIC, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mtcsnn.report import main as report_main
from mtcsnn.reporting.markdown import md
from mtcsnn.reporting.runs import DEBUG_RUN, collect_runs
from mtcsnn.run.config import CONFIG_PATH
from mtcsnn.run.training import train

SMALL = ["data=synthetic", *TINY_SYNTHETIC, *TINY]


def test_debug_runs_go_to_their_own_folder_and_never_into_a_report(tmp_path, capsys):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=["debug=default"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.task_name == "debug" and "/debug/" in cfg.hydra.run.dir
    assert cfg.trainer.fast_dev_run is True

    train(compose_train([*SMALL, "debug=limit"], tmp_path / "debug_run"))
    train(compose_train(SMALL, tmp_path / "real_run"))
    GlobalHydra.instance().clear()
    debug = json.loads((tmp_path / "debug_run" / "metrics.json").read_text())
    assert debug["config"]["trainer"]["limit_train_batches"] == 3
    runs, skipped = collect_runs(tmp_path)
    assert [run.path for run in runs] == [tmp_path / "real_run"]
    assert (tmp_path / "debug_run", DEBUG_RUN) in skipped
    assert report_main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    results = (tmp_path / "report" / "results.md").read_text()
    # the path as the page writes any text from a run folder (see test_output_safety.py)
    assert f"## Debug runs (not counted)\n\n- {md(tmp_path / 'debug_run')}" in results


def test_early_stopping_stops_when_the_val_metric_stops_improving(tmp_path):
    cfg = compose_train(
        [*SMALL, "callbacks=early_stopping", "trainer.max_epochs=10"]
        # no gain can reach 1.0 AUROC: the run stops after the second epoch
        + ["callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=1.0"],
        tmp_path,
    )
    results = train(cfg)
    GlobalHydra.instance().clear()
    assert results["epochs"] == 2


def test_tensorboard_writes_event_files_beside_the_csv_log(tmp_path):
    train(compose_train([*SMALL, "logger=csv_tensorboard"], tmp_path))
    GlobalHydra.instance().clear()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "csv" / "metrics.csv").exists()

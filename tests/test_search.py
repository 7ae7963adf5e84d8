import json

import pytest
from helpers.cli import TINY_SEARCH, run_train


@pytest.mark.slow
def test_search_trains_each_trial_and_resumes_a_stored_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = run_train(
        *TINY_SEARCH,
        "hparams_search.n_trials=2",
        f"hparams_search.storage={storage}",
        f"hydra.run.dir={tmp_path / 'a'}",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "a" / "search.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"]
    values = []
    for trial in summary["trials"]:
        metrics = json.loads(
            (tmp_path / "a" / f"trial_{trial['number']:03d}" / "metrics.json").read_text()
        )
        # the trial really ran with its suggested values, and reports its own val AUROC
        assert (
            metrics["config"]["model"]["optimizer"]["lr"] == trial["params"]["model.optimizer.lr"]
        )
        assert metrics["config"]["loss"]["lam"] == trial["params"]["loss.lam"]
        assert trial["value"] == pytest.approx(metrics["val"]["auroc"])
        values.append(trial["value"])
    assert summary["best"]["value"] == max(values)
    assert summary["metric"] == "val/auroc" and summary["direction"] == "maximize"
    # trials never touch test; the chosen one is tested once, at the end
    tested = [
        t["number"]
        for t in summary["trials"]
        if (tmp_path / "a" / f"trial_{t['number']:03d}" / "test_predictions.csv").exists()
    ]
    assert tested == [summary["best"]["number"]]
    best_dir = tmp_path / "a" / f"trial_{summary['best']['number']:03d}"
    best_metrics = json.loads((best_dir / "metrics.json").read_text())
    assert summary["best"]["test"] == best_metrics["test"]
    assert (
        sum(
            len(json.loads(p.read_text())["test"] or {}) > 0
            for p in (tmp_path / "a").glob("trial_*/metrics.json")
        )
        == 1
    )
    assert (first.stdout + first.stderr).count("- test: auroc") == 1

    again = run_train(  # n_trials is the study's total: one more
        *TINY_SEARCH,
        "hparams_search.n_trials=3",
        f"hparams_search.storage={storage}",
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "b" / "search.json").read_text())
    assert len(resumed["trials"]) == 3
    params = [tuple(sorted(t["params"].items())) for t in resumed["trials"]]
    assert len(set(params)) == 3  # the resumed sampler does not redraw earlier points

    # the stored study keeps its direction: values of another metric would be mixed in
    other = run_train(
        *TINY_SEARCH,
        "hparams_search.n_trials=1",
        f"hparams_search.storage={storage}",
        "optimized_metric=val/loss",
        f"hydra.run.dir={tmp_path / 'c'}",
    )
    assert other.returncode != 0
    assert "error: " in other.stderr and "searched on val/auroc" in other.stderr
    assert "Traceback" not in other.stderr and not list((tmp_path / "c").glob("trial_*"))


@pytest.mark.slow
def test_a_search_on_val_loss_minimises_it(tmp_path):
    proc = run_train(
        *TINY_SEARCH,
        "hparams_search.n_trials=2",
        "optimized_metric=val/loss",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["direction"] == "minimize"
    values = [t["value"] for t in summary["trials"]]
    assert len(set(values)) == 2 and summary["best"]["value"] == min(values)


@pytest.mark.slow
def test_search_refuses_a_test_metric(tmp_path):
    proc = run_train(*TINY_SEARCH, "optimized_metric=test/auroc", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "optimized_metric" in proc.stderr and "use a val metric" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_dead_workers_trial_enqueued_again_is_run_even_when_the_study_looks_full():
    """The dead worker's trial goes stale only after this worker's own trial: it is enqueued
    again, and counted, but this worker must still run it rather than end the study."""
    import time

    import optuna

    from mtcsnn.run.search import HEARTBEAT, run_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    dead = study.ask({"lam": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr(HEARTBEAT, time.time() - 100)  # its worker stopped long ago
    done = study.ask({"lam": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    ran = []

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial.suggest_float("lam", 0, 1))
        return 0.6

    run_trials(study, objective, n_trials=2, heartbeat_s=1, stale_after_s=4)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"], states
    assert ran == [dead.params["lam"]]
    assert study.trials[2].user_attrs["retry_of"] == 0

import json
import math

import numpy as np
import pytest
from helpers.cli import run_with_the_reader_gone
from helpers.metrics import write_robustness
from sklearn.metrics import roc_auc_score

from mtcsnn.grading.comparison import ovr_auroc
from mtcsnn.grading.selection import held_out_auroc
from mtcsnn.report import main
from mtcsnn.reporting.comparing import baseline_of, chosen_on_val, paired_difference
from mtcsnn.reporting.grouping import group_runs, label
from mtcsnn.reporting.markdown import md
from mtcsnn.reporting.predictions import read_val_predictions
from mtcsnn.reporting.runs import collect_runs
from mtcsnn.run.files import predictions_csv, val_predictions_csv

TEST_AUROC = {
    ("ce", 1): 0.70,
    ("ce", 2): 0.72,
    ("ce", 3): 0.74,
    ("mtcsnn", 1): 0.71,
    ("mtcsnn", 2): 0.75,
    ("mtcsnn", 3): 0.76,
}


def fake_predictions(grades: np.ndarray, skill: float, seed: int) -> dict:
    import torch

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(grades), 5)) + skill * np.eye(5)[grades]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {
        "index": torch.arange(len(grades)),
        "grade": torch.from_numpy(grades),
        "probs": torch.from_numpy(probs).float(),
        "score": torch.zeros(len(grades)),
    }


def write_run(folder, loss: str, seed: int, grades: np.ndarray, skill: float, lam=None):
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    auroc = TEST_AUROC[(loss, seed)]
    config = {"seed": seed, "model": {"net": {"backbone": "resnet18"}}, "loss": {}}
    if loss == "mtcsnn":
        config["loss"]["lam"] = 0.5 if lam is None else lam
    metrics = {
        "val": {"auroc": auroc + 0.05, "acc": 0.5, "kappa": 0.5, "mae": 0.8},
        "test": {"auroc": auroc, "acc": 0.5, "kappa": 0.4, "mae": 0.9},
        "test_confusion": np.eye(5, dtype=int).tolist(),
        "seed": seed,
        "choices": {"model": "resnet18", "loss": loss},
        "config": config,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "csv").mkdir()
    curve = "".join(f"{e},{auroc + 0.01 * e},\n" for e in range(3))
    (folder / "csv" / "metrics.csv").write_text("epoch,val/auroc,train/loss\n" + curve)
    (folder / "test_predictions.csv").write_text(
        predictions_csv(fake_predictions(grades, skill, seed))
    )


@pytest.fixture
def sweep(tmp_path):
    grades = np.arange(100) % 5
    job = 0
    for loss, skill in (("ce", 0.5), ("mtcsnn", 3.0)):
        for seed in (1, 2, 3):
            write_run(tmp_path / str(job), loss, seed, grades, skill)
            job += 1
    # an unfinished job and one that lost its predictions
    (tmp_path / "6" / ".hydra").mkdir(parents=True)
    (tmp_path / "6" / ".hydra" / "config.yaml").write_text("seed: 4\n")
    write_run(tmp_path / "7", "ce", 1, grades, 0.5)
    (tmp_path / "7" / "test_predictions.csv").unlink()
    return tmp_path


def test_runs_grouped_by_what_differs_and_skips_explained(sweep):
    runs, skipped = collect_runs(sweep)
    assert len(runs) == 6
    assert {p.name: why for p, why in skipped} == {
        "6": "unfinished: no metrics.json",
        "7": "missing test_predictions.csv",
    }
    groups = group_runs(runs)
    labels = {tuple(v for _, v in config): len(r) for config, r in groups.items()}
    assert labels == {("ce",): 3, ("mtcsnn",): 3}  # seeds and the ce-less lam do not split


def test_report_table_has_exact_means_and_the_skips(sweep, capsys):
    assert main([str(sweep), "--bootstrap", "200"]) == 0
    table = (sweep / "results.md").read_text()
    ce_mean, ce_std = np.mean([0.70, 0.72, 0.74]), np.std([0.70, 0.72, 0.74], ddof=1)
    mt_mean, mt_std = np.mean([0.71, 0.75, 0.76]), np.std([0.71, 0.75, 0.76], ddof=1)
    assert f"| loss=ce | 3 | {ce_mean:.4f} +/- {ce_std:.4f} |" in table
    assert f"| loss=mtcsnn | 3 | {mt_mean:.4f} +/- {mt_std:.4f} |" in table
    assert "| loss=mtcsnn | loss=ce | 3 |" in table
    assert "unfinished: no metrics.json" in table and "missing test_predictions.csv" in table
    err = capsys.readouterr().err
    assert "skipped" in err and "7" in err
    for figure in ("confusion_matrix.png", "roc_curves.png", "val_curves.png"):
        assert (sweep / figure).stat().st_size > 1000


def test_lambda_sweep_is_compared_with_its_lambda_zero(tmp_path, monkeypatch):
    grades = np.arange(100) % 5
    for seed in (7, 8):
        monkeypatch.setitem(TEST_AUROC, ("mtcsnn", seed), 0.7)
    job = 0
    for lam, skill in ((0, 0.5), (2, 3.0)):
        for seed in (7, 8):
            write_run(tmp_path / str(job), "mtcsnn", seed, grades, skill, lam=lam)
            job += 1
    assert main([str(tmp_path), "--bootstrap", "200"]) == 0
    text = (tmp_path / "results.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| loss.lam=2 | loss.lam=0 |")]
    assert "| 2 | +" in row  # two paired seeds, a positive AUROC difference


def test_a_folder_of_links_to_runs_is_a_comparison(sweep, tmp_path_factory):
    # the usual way to compare sweeps kept in different places: links to them in one folder
    comparison = tmp_path_factory.mktemp("comparison")
    (comparison / "ce_and_mtcsnn").symlink_to(sweep, target_is_directory=True)
    (comparison / "again").symlink_to(sweep, target_is_directory=True)  # the same runs twice
    (sweep / "0" / "up").symlink_to(comparison, target_is_directory=True)  # a loop
    lambda_two = tmp_path_factory.mktemp("lambda_two")
    grades = np.arange(100) % 5
    for seed in (1, 2, 3):
        write_run(lambda_two / str(seed), "mtcsnn", seed, grades, 3.0, lam=2)
    (comparison / "lambda_two").symlink_to(lambda_two, target_is_directory=True)

    runs, _ = collect_runs(comparison)
    assert len(runs) == 9  # each run once, whichever links lead to it
    labels = sorted(", ".join(f"{k}={v}" for k, v in config) for config in group_runs(runs))
    # loss=ce has no lambda: its label says nothing of one
    assert labels == [
        "choices.loss=ce",
        "choices.loss=mtcsnn, config.loss.lam=0.5",
        "choices.loss=mtcsnn, config.loss.lam=2",
    ]


def test_a_setting_added_later_does_not_split_a_configuration(sweep):
    runs, _ = collect_runs(sweep)
    for run in runs[:2]:  # as if written by a newer version with one more (default) setting
        run.settings["config.model.compile"] = False
    assert {label for label in map(lambda c: c[0][1], group_runs(runs))} == {"ce", "mtcsnn"}
    runs[2].settings["config.model.compile"] = True  # two values: a real difference
    assert len(group_runs(runs)) > 2


def test_runs_of_the_earlier_checkpoint_names_are_the_same_configuration(sweep, capsys):
    """Runs whose checkpoint names counted from 0 (Lightning's own callback, ``best_epoch``)
    are one configuration with runs that count from 1 (``best_epoch_number``)."""
    old = "pytorch_lightning.callbacks.ModelCheckpoint"
    for n, folder in enumerate(sorted(p for p in sweep.iterdir() if p.name in "012345")):
        metrics = json.loads((folder / "metrics.json").read_text())
        earlier = n % 2 == 0
        target = old if earlier else "mtcsnn.run.callbacks.EpochCheckpoint"
        metrics["config"]["callbacks"] = {"model_checkpoint": {"_target_": target}}
        metrics.update({"best_epoch": 1} if earlier else {"best_epoch_number": 2})
        (folder / "metrics.json").write_text(json.dumps(metrics))
    runs, _ = collect_runs(sweep)
    assert len(runs) == 6
    labels = {tuple(v for _, v in config): len(r) for config, r in group_runs(runs).items()}
    assert labels == {("ce",): 3, ("mtcsnn",): 3}
    assert main([str(sweep), "--bootstrap", "200"]) == 0
    assert "ModelCheckpoint" not in capsys.readouterr().out
    from mtcsnn.run.files import best_epoch_number

    assert [best_epoch_number(r.metrics) for r in runs] == [2] * 6  # each, counted from 1


def test_what_a_choice_or_the_checkpoint_metric_brings_with_it_is_not_a_setting(sweep):
    """model/scheduler=exponential brings model.scheduler.gamma, optimized_metric=val/loss the
    checkpoint's monitor and mode: the label names the choice and the metric only."""
    runs, _ = collect_runs(sweep)
    for i, run in enumerate(runs):
        exponential, on_loss = i % 3 == 1, i % 3 == 2
        run.settings["choices.model/scheduler"] = "exponential" if exponential else "multistep"
        run.settings["config.model.scheduler.gamma"] = 0.955 if exponential else 0.1
        metric = "val/loss" if on_loss else "val/auroc"
        run.settings["config.optimized_metric"] = metric
        for callback in ("model_checkpoint", "epoch_log"):
            run.settings[f"config.callbacks.{callback}.monitor"] = metric
            run.settings[f"config.callbacks.{callback}.mode"] = "min" if on_loss else "max"
    keys = {k for config in group_runs(runs) for k, _ in config}
    assert keys == {"choices.loss", "choices.model/scheduler", "config.optimized_metric"}


@pytest.mark.parametrize("set_on_the_command_line", [True, False])
def test_a_value_each_loss_was_given_by_hand_is_a_setting(sweep, set_on_the_command_line):
    """Each loss with its own settings in one folder (CE without label smoothing, MTCSNN with):
    a value the command line set names the configuration, though it changes with the loss."""
    for job in range(6):
        path = sweep / str(job) / "metrics.json"
        metrics = json.loads(path.read_text())
        mtcsnn = metrics["choices"]["loss"] == "mtcsnn"
        metrics["config"]["loss"]["label_smoothing"] = 0.1 if mtcsnn else None
        path.write_text(json.dumps(metrics))
        overrides = [f"loss={metrics['choices']['loss']}", f"seed={metrics['seed']}"]
        if mtcsnn and set_on_the_command_line:
            overrides.append("loss.label_smoothing=0.1")
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {line}\n" for line in overrides)
        )
    keys = {k for config in group_runs(collect_runs(sweep)[0]) for k, _ in config}
    by_hand = {"config.loss.label_smoothing"} if set_on_the_command_line else set()
    assert keys == {"choices.loss"} | by_hand


def test_report_compares_the_score_decodings_where_runs_have_them(sweep):
    for job in range(3, 6):  # the mtcsnn runs
        path = sweep / str(job) / "metrics.json"
        metrics = json.loads(path.read_text())
        decoded = {"acc": 0.6, "kappa": 0.7, "mae": 0.5, "acc_within1": 0.9}
        metrics["score_decoding"] = {"thresholds": {"test": decoded}, "pairwise": {"test": decoded}}
        path.write_text(json.dumps(metrics))
    assert main([str(sweep), "--bootstrap", "50"]) == 0
    text = (sweep / "results.md").read_text()
    section = text.split("## The severity score as a grader (test)")[1]
    (row,) = [line for line in section.splitlines() if line.startswith("| loss=mtcsnn |")]
    assert row.split(" | ")[1:5] == [
        "3",
        "0.5000 +/- 0.0000",
        "0.4000 +/- 0.0000",
        "0.9000 +/- 0.0000",
    ]
    assert "| loss=ce |" not in section


def test_off_by_one_accuracy_comes_from_the_predictions_when_metrics_lack_it(sweep):
    runs, _ = collect_runs(sweep)
    for run in runs:
        expected = np.mean(np.abs(run.probs.argmax(1) - run.grades) <= 1)
        assert run.metrics["test"]["acc_within1"] == pytest.approx(expected)
    assert main([str(sweep), "--bootstrap", "20"]) == 0
    assert "test off-by-one accuracy" in (sweep / "results.md").read_text()


def test_report_on_a_single_run(sweep, tmp_path):
    assert main([str(sweep / "0"), "--bootstrap", "50"]) == 0
    assert "| all runs | 1 | 0.7000 |" in (sweep / "0" / "results.md").read_text()


@pytest.mark.slow
def test_a_reader_that_stops_reading_gets_the_files_and_no_traceback(sweep):
    """``mtcsnn.report ... | true``: the reader is gone before the report prints."""
    result = run_with_the_reader_gone("mtcsnn.report", str(sweep), "--bootstrap", "50")
    assert result.returncode == 141, result.stderr  # as a shell tool stopped by the pipe
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert "| test AUROC" in (sweep / "results.md").read_text()
    assert json.loads((sweep / "summary.json").read_text())


def test_report_on_a_folder_without_runs(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_paired_bootstrap_sees_a_real_difference(sweep):
    groups = group_runs(collect_runs(sweep)[0])
    by_loss = {dict(c)["choices.loss"]: {r.seed: r for r in runs} for c, runs in groups.items()}
    pairs = [(by_loss["mtcsnn"][s], by_loss["ce"][s]) for s in (1, 2, 3)]
    point, low, high = paired_difference(pairs, "auroc", num_resamples=300)
    assert 0 < low < point < high
    # a run against itself differs by exactly nothing
    same = [(by_loss["ce"][s], by_loss["ce"][s]) for s in (1, 2, 3)]
    assert paired_difference(same, "acc", num_resamples=50) == (0.0, 0.0, 0.0)


def test_rank_auroc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    grades = rng.integers(0, 5, size=(3, 200))
    probs = rng.integers(0, 4, size=(3, 200, 5)).astype(float)  # many ties
    ours = ovr_auroc(grades, probs)
    for b in range(3):
        per_class = [roc_auc_score(grades[b] == c, probs[b, :, c]) for c in range(5)]
        assert math.isclose(ours[b], np.mean(per_class), abs_tol=1e-12)


def results_table(folder) -> str:
    assert main([str(folder), "--bootstrap", "50"]) == 0
    return (folder / "results.md").read_text()


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", '{"test": "high"}', '{"test": {"auroc": 0.7}}', "null"],
    ids=["list", "string-test", "missing-metrics", "null"],
)
def test_a_metrics_json_of_another_shape_is_skipped_with_a_reason(sweep, content):
    (sweep / "0" / "metrics.json").write_text(content)
    runs, skipped = collect_runs(sweep)
    assert len(runs) == 5
    reasons = {p.name: why for p, why in skipped}
    assert reasons["0"].startswith("metrics.json of another shape")
    assert "another shape" in results_table(sweep)


def test_files_nested_too_deep_to_parse_lose_no_other_run(sweep):
    deep = "[" * 100_000 + "]" * 100_000
    (sweep / "0" / "metrics.json").write_text(deep)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text(deep)
    runs, skipped = collect_runs(sweep)
    assert len(runs) == 5  # run 1 is read as if it had no overrides
    assert dict((p.name, why) for p, why in skipped)["0"].startswith("unreadable (RecursionError")
    assert "unreadable" in results_table(sweep)


@pytest.mark.parametrize("content", ["[1]", "[" * 100_000 + "]" * 100_000, "{not json"])
def test_a_failed_json_of_another_shape_is_said_unreadable(sweep, content):
    (sweep / "0" / "metrics.json").unlink()
    (sweep / "0" / "failed.json").write_text(content)
    runs, skipped = collect_runs(sweep)
    assert len(runs) == 5
    assert dict((p.name, why) for p, why in skipped)["0"] == "failed: unreadable failed.json"


def test_runs_tested_on_other_data_are_never_paired(sweep):
    # the CE run of seed 1 was tested on other images: no pair for seed 1, and no crash
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    metrics["test_data"] = "sha256:other"
    (sweep / "0" / "metrics.json").write_text(json.dumps(metrics))
    assert "| 2 |" in results_table(sweep).split("## MTCSNN vs CE")[1]
    # other grades with no recorded fingerprint (runs of older versions) do not pair either
    other = np.arange(100)[::-1] % 5
    (sweep / "1" / "test_predictions.csv").write_text(
        predictions_csv(fake_predictions(other, 0.5, 2))
    )
    assert "| 1 |" in results_table(sweep).split("## MTCSNN vs CE")[1]


def test_pooling_configurations_counts_how_the_difference_moves_between_them(tmp_path):
    # MTCSNN far ahead of CE at one lambda and far behind at another: each row's interval over
    # the test images excludes zero, the pooled one, which draws the pairs too, does not
    grades = np.arange(200) % 5
    job = 0
    for loss, lam, skill in (("ce", None, 1.5), ("mtcsnn", 0.5, 3.0), ("mtcsnn", 1, 0.5)):
        for seed in (1, 2, 3):
            write_run(tmp_path / str(job), loss, seed, grades, skill, lam=lam)
            job += 1
    section = results_table(tmp_path).split("## MTCSNN vs CE")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| ")}

    def interval(row: str) -> tuple[float, float]:
        low, high = row.split("|")[4].split("[")[1].rstrip("] ").split(", ")
        return float(low), float(high)

    assert interval(rows["| loss=mtcsnn, loss.lam=0.5"])[0] > 0
    assert interval(rows["| loss=mtcsnn, loss.lam=1"])[1] < 0
    pooled = rows["| all 2 configurations above, pooled"]
    assert "| 6 pairs |" in pooled
    low, high = interval(pooled)
    assert low < 0 < high


def test_pooled_interval_is_the_paired_one_when_every_pair_is_the_same():
    from mtcsnn.grading.comparison import paired_difference as paired
    from mtcsnn.grading.comparison import pooled_difference

    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, 150)
    a, b = (rng.dirichlet(np.ones(5), 150) for _ in range(2))
    same = [((grades, a), (grades, b))] * 4
    assert pooled_difference(same, "auroc", 200) == paired(same, "auroc", 200)
    # pairs that disagree widen it
    other = [((grades, b), (grades, a))] * 4
    low, high = pooled_difference(same + other, "auroc", 200)[1:]
    assert low < -0.5 * abs(paired(same, "auroc", 200)[0]) and high > 0


def test_mtcsnn_is_paired_with_the_ce_that_shares_its_loss_options():
    def config(loss, **values):
        return (("choices.loss", loss), *((f"config.loss.{k}", v) for k, v in values.items()))

    ce_plain = config("ce", label_smoothing=None)
    ce_smooth = config("ce", label_smoothing=0.1)
    groups = {ce_plain: [], ce_smooth: []}
    assert baseline_of(config("mtcsnn", lam=0.5, label_smoothing=0.1), groups) == ce_smooth
    assert baseline_of(config("mtcsnn", lam=0.5, label_smoothing=None), groups) == ce_plain
    # a lambda sweep without loss=ce: lambda 0 with the same difference
    zero_abs = config("mtcsnn", lam=0, difference="absolute")
    zero_signed = config("mtcsnn", lam=0, difference="signed")
    sweep = {zero_abs: [], zero_signed: []}
    assert baseline_of(config("mtcsnn", lam=0.5, difference="signed"), sweep) == zero_signed


def test_repeats_of_a_seed_are_not_counted_as_seeds_and_threads_do_not_split(sweep):
    for job in ("1", "2"):  # the other CE runs become repeats of seed 1, at other thread counts
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        metrics["seed"] = metrics["config"]["seed"] = 1
        metrics["config"]["threads"] = 2 if job == "1" else None
        (sweep / job / "metrics.json").write_text(json.dumps(metrics))
    table = results_table(sweep).split("\n## ")[0]  # the main table: one row per configuration
    ce_rows = [line for line in table.splitlines() if line.startswith("| loss=ce")]
    assert len(ce_rows) == 1
    assert "| 1 (3 runs: repeats of a seed) |" in ce_rows[0]


def test_a_search_folder_is_not_an_unfinished_run_and_untested_trials_are_apart(tmp_path):
    grades = np.arange(100) % 5
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "search.json").write_text("{}")
    write_run(tmp_path / "trial_000", "ce", 1, grades, 0.5)
    write_run(tmp_path / "trial_001", "ce", 2, grades, 0.5)
    metrics = json.loads((tmp_path / "trial_001" / "metrics.json").read_text())
    metrics.update(test=None, test_confusion=None)
    (tmp_path / "trial_001" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "trial_001" / "test_predictions.csv").unlink()
    runs, skipped = collect_runs(tmp_path)
    assert [r.path.name for r in runs] == ["trial_000"]
    assert [(p.name, why.split(" (")[0]) for p, why in skipped] == [
        ("trial_001", "search trial not tested")
    ]
    table = results_table(tmp_path)
    assert "## Search trials not tested" in table and "Unfinished" not in table


def test_seed_ensembles_average_the_seeds_probabilities(sweep):
    from sklearn.metrics import cohen_kappa_score

    from mtcsnn.reporting.comparing import ensemble_rows
    from mtcsnn.reporting.predictions import read_predictions

    runs, _ = collect_runs(sweep)
    groups = group_runs(runs)
    rows = {dict(row["config"])["choices.loss"]: row for row in ensemble_rows(groups, 200)}
    assert set(rows) == {"ce", "mtcsnn"} and rows["mtcsnn"]["seeds"] == 3
    mtcsnn_dirs = [r.path for r in runs if r.settings["choices.loss"] == "mtcsnn"]
    read = [read_predictions(d / "test_predictions.csv") for d in mtcsnn_dirs]
    grades, probs = [g for g, _ in read], [p for _, p in read]
    mean = np.mean(probs, axis=0)
    scores = rows["mtcsnn"]["scores"]
    assert scores["auroc"] == pytest.approx(roc_auc_score(grades[0], mean, multi_class="ovr"))
    assert scores["acc"] == pytest.approx(float((mean.argmax(1) == grades[0]).mean()))
    kappa = cohen_kappa_score(grades[0], mean.argmax(1), weights="quadratic")
    assert scores["kappa"] == pytest.approx(kappa)
    # the better-trained MTCSNN runs' ensemble beats the CE ensemble, with a CI above zero
    point, low, high = rows["mtcsnn"]["auroc"]
    assert point == pytest.approx(scores["auroc"] - rows["ce"]["scores"]["auroc"])
    assert 0 < low <= point <= high
    assert "baseline" not in rows["ce"]
    assert main([str(sweep), "--bootstrap", "100"]) == 0
    results = (sweep / "results.md").read_text()
    assert "## Seed ensembles" in results
    assert f"| 3 | {scores['auroc']:.4f} | {scores['acc']:.4f} |" in results


def test_lambda_zero_is_ranked_with_ce_not_chosen_for_mtcsnn(tmp_path, monkeypatch):
    grades = np.arange(100) % 5
    for seed in (1, 2, 3):
        for lam in (0, 0.5, 1):
            # lambda 0 has the best val: it is CE, so MTCSNN's choice is among 0.5 and 1
            monkeypatch.setitem(TEST_AUROC, ("mtcsnn", seed), {0: 0.8, 0.5: 0.7, 1: 0.75}[lam])
            write_run(tmp_path / f"{lam}_{seed}", "mtcsnn", seed, grades, 1.0, lam=lam)
        monkeypatch.setitem(TEST_AUROC, ("ce", seed), 0.6)
        write_run(tmp_path / f"ce_{seed}", "ce", seed, grades, 1.0)
    runs, _ = collect_runs(tmp_path)
    rows = {row["loss"]: row["ranked"] for row in chosen_on_val(group_runs(runs))}
    assert [dict(c).get("config.loss.lam") for c in rows["mtcsnn"]] == [1, 0.5]
    assert [dict(c).get("config.loss.lam") for c in rows["ce"]] == [0, None]


def test_val_chooses_the_recipe_per_loss_and_test_plays_no_part(tmp_path):
    grades = np.arange(100) % 5
    job = 0
    # recipe "strong": lower val than "dihedral" for both losses, but higher test
    for augment, val_shift, test_shift in (("dihedral", 0.06, -0.03), ("strong", 0.02, 0.03)):
        for loss in ("ce", "mtcsnn"):
            for seed in (1, 2, 3):
                folder = tmp_path / str(job)
                write_run(folder, loss, seed, grades, 1.0)
                metrics = json.loads((folder / "metrics.json").read_text())
                metrics["config"]["data"] = {"augment": augment}
                metrics["val"]["auroc"] += val_shift
                metrics["test"]["auroc"] += test_shift
                (folder / "metrics.json").write_text(json.dumps(metrics))
                job += 1
    # one seed of a third recipe with the best val of all: listed, never chosen
    write_run(tmp_path / "one_seed", "ce", 1, grades, 1.0)
    metrics = json.loads((tmp_path / "one_seed" / "metrics.json").read_text())
    metrics["config"]["data"] = {"augment": "flip"}
    metrics["val"]["auroc"] = 0.99
    (tmp_path / "one_seed" / "metrics.json").write_text(json.dumps(metrics))
    runs, _ = collect_runs(tmp_path)
    rows = chosen_on_val(group_runs(runs))
    assert [row["loss"] for row in rows] == ["ce", "mtcsnn"]
    for row in rows:
        assert [dict(config)["config.data.augment"] for config in row["ranked"]] == [
            "dihedral",
            "strong",
        ]
    assert main([str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text().split("## Chosen on val")[1]
    assert "| ce | val AUROC | 1 | **loss=ce, data.augment=dihedral** | 3 |" in table
    assert "| mtcsnn | val AUROC | 2 | loss=mtcsnn, data.augment=strong | 3 |" in table
    assert "| ce | val AUROC | - | loss=ce, data.augment=flip | 1 | 0.9900 | - |" in table
    assert [dict(c)["config.data.augment"] for c in rows[0]["too_few"]] == ["flip"]
    # each choice against what it passed over (not the one-seed recipe: it was not ranked);
    # runs of the official split have no out-of-fold figures
    summary = json.loads((tmp_path / "summary.json").read_text())
    passed = {r["configuration"]: r for r in summary["chosen_vs_passed_over"]}
    assert set(passed) == {"loss=ce, data.augment=dihedral", "loss=mtcsnn, data.augment=dihedral"}
    for loss in ("ce", "mtcsnn"):
        row = passed[f"loss={loss}, data.augment=dihedral"]
        assert row["passed_over"] == f"loss={loss}, data.augment=strong"
        assert row["paired_seeds"] == 3 and row["out_of_fold"] is None


def write_val_predictions(folder, probs: np.ndarray, grades: np.ndarray) -> None:
    import torch

    (folder / "val_predictions.csv").write_text(
        val_predictions_csv(
            list(range(len(probs))),
            torch.arange(len(grades)),
            torch.from_numpy(grades),
            [torch.from_numpy(p) for p in probs],
        )
    )


def noisy_and_steady_runs(tmp_path) -> None:
    """CE with two recipes, 3 seeds each: 'noisy' epochs know nothing, but their best epoch's
    val AUROC (the maximum of 30 noisy evaluations) beats 'steady', whose epochs all know a
    little; the held-out val AUROC sees through it."""
    grades = np.arange(60) % 5
    rng = np.random.default_rng(0)
    for augment in ("noisy", "steady"):
        for seed in (1, 2, 3):
            folder = tmp_path / f"{augment}_{seed}"
            write_run(folder, "ce", seed, grades, 1.0)
            logits = rng.normal(size=(30, len(grades), 5))
            if augment == "steady":
                logits += 0.5 * np.eye(5)[grades]
            probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
            write_val_predictions(folder, probs, grades)
            best = ovr_auroc(np.broadcast_to(grades, (30, 60)), probs).max()
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics["config"]["data"] = {"augment": augment}
            # each run's own file: where it writes, not what it trained
            own = str(folder / "val_predictions.csv")
            metrics["config"]["callbacks"] = {"val_predictions": {"path": own}}
            metrics["val"]["auroc"] = float(best) + (0.2 if augment == "noisy" else 0)
            (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_held_out_val_auroc_chooses_where_every_run_kept_val_predictions(tmp_path):
    noisy_and_steady_runs(tmp_path)
    runs, _ = collect_runs(tmp_path)
    assert all(r.held_out_val_auroc is not None for r in runs)
    (row,) = chosen_on_val(group_runs(runs))
    assert row["metric"] == "val/auroc_held_out"
    assert [dict(c)["config.data.augment"] for c in row["ranked"]] == ["steady", "noisy"]
    assert main([str(tmp_path)]) == 0
    results = (tmp_path / "results.md").read_text()
    assert "| held-out val AUROC |" in results.split("\n\n")[2]  # the first table's header
    assert "| ce | held-out val AUROC | 1 | **data.augment=steady** | 3 |" in results


@pytest.mark.parametrize(
    "damage",
    ["nan", "missing_rows", "text", "empty"],
)
def test_a_damaged_val_predictions_file_leaves_the_choice_to_the_best_epoch(tmp_path, damage):
    noisy_and_steady_runs(tmp_path)
    path = tmp_path / "steady_2" / "val_predictions.csv"
    lines = path.read_text().splitlines()
    if damage == "nan":
        lines[5] = lines[5].rsplit(",", 1)[0] + ",nan"
    elif damage == "missing_rows":
        del lines[70]  # one image of epoch 1 gone
    elif damage == "text":
        lines[3] = lines[3].replace(lines[3].split(",")[2], "grade", 1)
    else:
        lines = []
    path.write_text("\n".join(lines))
    runs, skipped = collect_runs(tmp_path)
    assert len(runs) == 6 and not skipped  # the run itself still counts
    assert [r.held_out_val_auroc is None for r in runs].count(True) == 1
    (row,) = chosen_on_val(group_runs(runs))
    assert row["metric"] == "val/auroc"
    assert [dict(c)["config.data.augment"] for c in row["ranked"]] == ["noisy", "steady"]
    (damaged,) = [r for r in runs if r.held_out_problem]
    assert damaged.path == path.parent
    assert damaged.held_out_problem.startswith("val_predictions.csv unusable (")
    assert main([str(tmp_path)]) == 0
    listed = (tmp_path / "results.md").read_text().split("## Runs counted without a held-out")[1]
    assert f"- {md(path.parent)}: val_predictions.csv unusable (" in listed
    assert "\n- " not in listed.split(md(damaged.held_out_problem))[1]  # that run alone


def test_a_grade_too_rare_to_split_is_said_not_hidden(tmp_path):
    noisy_and_steady_runs(tmp_path)
    path = tmp_path / "steady_2" / "val_predictions.csv"
    lines = path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    # one grade-4 image left in each epoch: no half can hold it and the other half too
    kept = [r for r in rows if r.split(",")[2] != "4" or int(r.split(",")[1]) == 4]
    path.write_text("\n".join([header, *kept]) + "\n")
    runs, _ = collect_runs(tmp_path)
    (damaged,) = [r for r in runs if r.held_out_problem]
    assert damaged.held_out_val_auroc is None
    assert "too few val images" in damaged.held_out_problem


def test_runs_chosen_on_val_loss_are_scored_at_the_epoch_their_rule_chose(tmp_path):
    noisy_and_steady_runs(tmp_path)
    for seed in (1, 2, 3):
        for augment, metric, mode in (("noisy", "val/auroc", "max"), ("steady", "val/loss", "min")):
            path = tmp_path / f"{augment}_{seed}" / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["config"]["optimized_metric"] = metric
            # resolved in a run's config; it follows optimized_metric: no setting of its own
            metrics["config"]["callbacks"]["model_checkpoint"] = {"mode": mode}
            path.write_text(json.dumps(metrics))
        # an epoch of modest confidence, then one that ranks better but is sharply wrong on
        # many images: AUROC would keep the second, the loss keeps the first
        grades = np.arange(60) % 5
        rng = np.random.default_rng(seed)
        onehot = np.eye(5)[grades]
        logits = np.stack(
            [
                0.5 * onehot + rng.normal(size=onehot.shape),
                20 * (onehot + rng.normal(size=onehot.shape)),
            ]
        )
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        write_val_predictions(
            tmp_path / f"steady_{seed}", probs / probs.sum(-1, keepdims=True), grades
        )
    runs, _ = collect_runs(tmp_path)
    for run in runs:
        rule = "val/loss" if run.path.name.startswith("steady") else "val/auroc"
        grades, probs = read_val_predictions(run.path / "val_predictions.csv")
        assert run.held_out_val_auroc == pytest.approx(held_out_auroc(grades, probs, rule))
    steady = [r for r in runs if r.path.name.startswith("steady")]
    by_auroc = [
        held_out_auroc(*read_val_predictions(r.path / "val_predictions.csv")) for r in steady
    ]
    assert [r.held_out_val_auroc for r in steady] != pytest.approx(by_auroc)  # another rule
    labels = sorted(label(config) for config in group_runs(runs))
    assert labels == [
        "data.augment=noisy, optimized_metric=val/auroc",
        "data.augment=steady, optimized_metric=val/loss",
    ]


def test_each_loss_s_val_choice_is_compared_with_ce_s_own(tmp_path):
    from mtcsnn.grading.calibration import top_grade_ece
    from mtcsnn.grading.selective import risk_coverage
    from mtcsnn.reporting.comparing import val_choices_compared
    from mtcsnn.reporting.predictions import read_predictions

    def area_by_top_probability(grades, probs):
        return risk_coverage(grades, probs, 1 - probs.max(1))["aurc"]

    grades = np.arange(100) % 5
    # val chooses dihedral for CE and strong for MTCSNN: the pairs cross recipes
    val_shift = {("ce", "dihedral"): 0.06, ("ce", "strong"): 0.0}
    val_shift |= {("mtcsnn", "dihedral"): 0.0, ("mtcsnn", "strong"): 0.06}
    folders = {}
    for (loss, augment), shift in val_shift.items():
        for seed in (1, 2, 3):
            folder = tmp_path / f"{loss}_{augment}_{seed}"
            skill = {"ce": 1.0, "mtcsnn": 1.5}[loss] + (0.3 if augment == "strong" else 0)
            write_run(folder, loss, seed, grades, skill)
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics["config"]["data"] = {"augment": augment}
            metrics["val"]["auroc"] += shift
            (folder / "metrics.json").write_text(json.dumps(metrics))
            write_robustness(folder, 0.75, {"contrast_down": 0.03 if loss == "ce" else 0.06})
            folders[loss, augment, seed] = folder
    runs, _ = collect_runs(tmp_path)
    groups = group_runs(runs)
    (row,) = val_choices_compared(groups, chosen_on_val(groups), 200)
    assert dict(row["config"])["config.data.augment"] == "strong"
    assert dict(row["baseline"])["config.data.augment"] == "dihedral"

    def auroc(folder):
        test_grades, probs = read_predictions(folder / "test_predictions.csv")
        return roc_auc_score(test_grades, probs, multi_class="ovr", average="macro")

    expected = np.mean(
        [
            auroc(folders["mtcsnn", "strong", s]) - auroc(folders["ce", "dihedral", s])
            for s in (1, 2, 3)
        ]
    )
    assert row["seeds"] == 3 and row["auroc"][0] == pytest.approx(expected)
    assert row["auroc"][1] <= expected <= row["auroc"][2]
    # calibration and referral of the unsure compared alike
    for metric, of in (("ece", top_grade_ece), ("aurc", area_by_top_probability)):
        expected = np.mean(
            [
                of(*read_predictions(folders["mtcsnn", "strong", s] / "test_predictions.csv"))
                - of(*read_predictions(folders["ce", "dihedral", s] / "test_predictions.csv"))
                for s in (1, 2, 3)
            ]
        )
        assert row[metric][0] == pytest.approx(expected, abs=1e-6)
        assert row[metric][1] <= row[metric][0] <= row[metric][2]
    assert main([str(tmp_path), "--bootstrap", "100"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    (chosen,) = summary["val_choices_vs_ce"]
    assert chosen["ece"]["difference"] == pytest.approx(row["ece"][0])
    # the chosen one's corruption error over CE's choice's: (0.25 + 0.06) / (0.25 + 0.03)
    assert chosen["mce"] == pytest.approx(0.31 / 0.28)
    assert chosen["configuration"] == "loss=mtcsnn, data.augment=strong"
    assert chosen["baseline"] == "loss=ce, data.augment=dihedral"
    table = (tmp_path / "results.md").read_text().split("## Chosen on val")[1]
    assert "| loss=mtcsnn, data.augment=strong | loss=ce, data.augment=dihedral | 3 |" in table


def test_runs_of_several_folders_are_compared_together(tmp_path, capsys):
    grades = np.arange(100) % 5
    for loss, skill in (("ce", 0.5), ("mtcsnn", 3.0)):
        for seed in (1, 2, 3):
            write_run(tmp_path / f"sweep_{loss}" / str(seed), loss, seed, grades, skill)
    a, b, out = tmp_path / "sweep_ce", tmp_path / "sweep_mtcsnn", tmp_path / "report"
    assert main([str(a), str(b)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: several folders need --out (where to write the report)"
    )
    assert not (a / "results.md").exists()
    # a folder given twice, or inside another given, counts its runs once
    assert main([str(a), str(b), str(b / "1"), "--out", str(out), "--bootstrap", "100"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    by_name = {c["configuration"]: c for c in summary["configurations"]}
    assert by_name["loss=ce"]["seeds"] == [1, 2, 3] and by_name["loss=mtcsnn"]["seeds"] == [1, 2, 3]
    assert by_name["loss=mtcsnn"]["runs"] == ["sweep_mtcsnn/1", "sweep_mtcsnn/2", "sweep_mtcsnn/3"]
    (compared,) = summary["mtcsnn_vs_ce"]
    assert compared["paired_seeds"] == 3

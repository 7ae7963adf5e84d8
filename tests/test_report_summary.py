"""``summary.json``: the report's numbers for programs, the same as its page shows."""

import json
import re

import numpy as np
import pytest
from helpers.metrics import numbers_in, write_robustness
from test_report import sweep, write_run  # noqa: F401  (the fixture and the run writer)

from mtcsnn.report import main


def test_summary_holds_the_means_comparisons_and_ensembles(sweep):  # noqa: F811
    assert main([str(sweep), "--bootstrap", "200"]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    by_name = {c["configuration"]: c for c in summary["configurations"]}
    assert set(by_name) == {"loss=ce", "loss=mtcsnn"}
    ce = by_name["loss=ce"]
    assert ce["seeds"] == [1, 2, 3] and len(ce["runs"]) == 3
    assert ce["test"]["auroc"]["mean"] == np.mean([0.70, 0.72, 0.74])
    assert ce["test"]["auroc"]["std"] == np.std([0.70, 0.72, 0.74], ddof=1)
    assert ce["val"]["auroc"]["mean"] == np.mean([0.75, 0.77, 0.79])
    (compared,) = summary["mtcsnn_vs_ce"]
    assert (compared["configuration"], compared["baseline"]) == ("loss=mtcsnn", "loss=ce")
    auroc = compared["auroc"]
    assert auroc["low"] <= auroc["difference"] <= auroc["high"]
    ensembles = {e["configuration"]: e for e in summary["seed_ensembles"]}
    assert ensembles["loss=mtcsnn"]["seeds"] == 3
    assert ensembles["loss=mtcsnn"]["vs_baseline"]["auroc"]["difference"] > 0
    assert summary["bootstrap_resamples"] == 200


def test_every_number_on_the_page_is_in_the_summary(sweep):  # noqa: F811
    assert main([str(sweep), "--bootstrap", "200"]) == 0
    page = (sweep / "results.md").read_text()
    summary = json.loads((sweep / "summary.json").read_text())
    shown = set()
    for value in numbers_in(summary):
        shown |= {f"{value:.4f}", f"{value:+.4f}"}
    on_page = re.findall(r"[+-]?\d+\.\d{4}", page)
    assert len(on_page) > 20
    missing = [n for n in on_page if n not in shown]
    assert not missing, missing


def test_a_figure_that_does_not_exist_is_null_not_nan(tmp_path):
    grades = np.arange(100) % 5
    write_run(tmp_path / "0", "ce", 1, grades, 0.5)
    assert main([str(tmp_path), "--bootstrap", "50"]) == 0
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text  # JSON has no NaN: one seed has no spread
    (config,) = json.loads(text)["configurations"]
    assert config["test"]["auroc"]["std"] is None


def test_report_has_referable_dr_and_calibration_where_runs_measured_them(sweep):  # noqa: F811
    from sklearn.metrics import roc_auc_score

    from mtcsnn.reporting.predictions import read_predictions

    sensitivity = {}
    finished = [p for p in sweep.iterdir() if (p / "test_predictions.csv").is_file()]
    for folder in sorted(finished):
        metrics = json.loads((folder / "metrics.json").read_text())
        grades, probs = read_predictions(folder / "test_predictions.csv")
        referable = grades >= 2
        p = probs[:, 2:].sum(1)
        sens = float(((p >= 0.5) & referable).sum() / referable.sum())
        sensitivity.setdefault(metrics["choices"]["loss"], []).append(sens)
        metrics["test"].update(
            ece=0.1,
            brier=0.6,
            nll=1.2,
            referable={
                "cut": 2,
                "auroc": float(roc_auc_score(referable, p)),
                "sensitivity": sens,
                "specificity": float(((p < 0.5) & ~referable).sum() / (~referable).sum()),
                "threshold": 0.5,
            },
        )
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(sweep), "--bootstrap", "200"]) == 0
    page = (sweep / "results.md").read_text()
    assert "## Referable DR (grade >= 2) and calibration (test)" in page
    ce = np.mean(sensitivity["ce"])
    section = page.split("## Referable DR")[1].split("\n## ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| loss=ce | 3 | ")]
    assert f"| {ce:.4f} +/- {np.std(sensitivity['ce'], ddof=1):.4f} |" in row
    summary = json.loads((sweep / "summary.json").read_text())
    by_name = {c["configuration"]: c for c in summary["configurations"]}
    assert by_name["loss=ce"]["test"]["referable"]["sensitivity"]["mean"] == ce
    assert by_name["loss=ce"]["test"]["ece"]["mean"] == pytest.approx(0.1)
    # MTCSNN - CE in referable AUROC, from the predictions, seed by seed
    (compared,) = summary["mtcsnn_vs_ce"]
    runs = {}
    for folder in finished:
        metrics = json.loads((folder / "metrics.json").read_text())
        runs[metrics["choices"]["loss"], metrics["seed"]] = metrics["test"]["referable"]
    expected = np.mean([runs["mtcsnn", s]["auroc"] - runs["ce", s]["auroc"] for s in (1, 2, 3)])
    assert compared["referable_auroc"]["difference"] == pytest.approx(expected)
    low, high = compared["referable_auroc"]["low"], compared["referable_auroc"]["high"]
    assert low <= expected <= high
    test_every_number_on_the_page_is_in_the_summary(sweep)


def test_referable_auroc_of_resamples_is_scikit_learns():
    from sklearn.metrics import roc_auc_score

    from mtcsnn.grading.comparison import referable_auroc

    rng = np.random.default_rng(3)
    grades = rng.integers(0, 5, (4, 60))
    probs = rng.dirichlet(np.ones(5), size=(4, 60))
    probs[..., 3] = probs[..., 2]  # ties in the summed probabilities count as half
    got = referable_auroc(grades, probs)
    for row in range(4):
        expected = roc_auc_score(grades[row] >= 2, probs[row, :, 2:].sum(1))
        assert got[row] == pytest.approx(expected)
    assert np.isnan(referable_auroc(np.zeros((1, 5), int), probs[:1, :5]))[0]


def test_report_refers_the_uncertain_for_single_models_and_ensembles(sweep):  # noqa: F811
    from mtcsnn.grading.selective import risk_coverage
    from mtcsnn.reporting.predictions import read_predictions

    assert main([str(sweep), "--bootstrap", "100"]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    rows = {
        (r["configuration"], r["models"], r["uncertainty"]): r
        for r in summary["referring_the_uncertain"]
    }
    finished = sorted(p for p in sweep.iterdir() if (p / "test_predictions.csv").is_file())
    ce = []
    for folder in finished:
        if json.loads((folder / "metrics.json").read_text())["choices"]["loss"] == "ce":
            grades, probs = read_predictions(folder / "test_predictions.csv")
            ce.append(risk_coverage(grades, probs, 1 - probs.max(1))["aurc"])
    single = rows["loss=ce", "single", "max_probability"]
    assert single["aurc"]["mean"] == pytest.approx(np.mean(ce))
    assert single["aurc"]["std"] == pytest.approx(np.std(ce, ddof=1))
    assert rows["loss=mtcsnn", "ensemble", "disagreement"]["seeds"] == 3
    assert "## Referring the uncertain (test)" in (sweep / "results.md").read_text()
    for figure in ("reliability.png", "risk_coverage.png"):
        assert (sweep / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (sweep / figure).stat().st_size > 5000


def test_report_summarises_robustness_and_the_corruption_error_against_ce(sweep):  # noqa: F811
    finished = sorted(p for p in sweep.iterdir() if (p / "test_predictions.csv").is_file())
    losses = {p: json.loads((p / "metrics.json").read_text())["choices"]["loss"] for p in finished}
    for folder, loss in losses.items():
        lost = (
            {"contrast_down": 0.06, "pixelate": 0.03}
            if loss == "ce"
            else {
                "contrast_down": 0.03,
                "pixelate": 0.03,
            }
        )
        write_robustness(folder, 0.75, lost)
    assert main([str(sweep), "--bootstrap", "50"]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    rows = {r["configuration"]: r for r in summary["robustness"]}
    # severities 1-5 lose lost * s / 3: the mean over severities is lost * 1
    assert rows["loss=ce"]["auroc_drop"] == pytest.approx({"pixelate": 0.03, "contrast_down": 0.06})
    assert rows["loss=ce"]["mean_drop"] == pytest.approx(0.045)
    # mCE: contrast (0.25 + 0.03) / (0.25 + 0.06), pixelate 1, averaged
    expected = ((0.28 / 0.31) + 1.0) / 2
    assert rows["loss=mtcsnn"]["mce_vs_baseline"] == pytest.approx(expected)
    assert "mce_vs_baseline" not in rows["loss=ce"]
    page = (sweep / "results.md").read_text()
    assert "## Robustness (test, MedMNIST-C corruptions)" in page
    test_every_number_on_the_page_is_in_the_summary(sweep)


def test_a_damaged_robustness_table_leaves_the_run_out_of_robustness(sweep):  # noqa: F811
    finished = sorted(p for p in sweep.iterdir() if (p / "test_predictions.csv").is_file())
    for folder in finished:
        write_robustness(folder, 0.75, {"contrast_down": 0.03})
    (finished[0] / "robustness.csv").write_text("corruption,severity\nfog,9\n")
    assert main([str(sweep), "--bootstrap", "50"]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    damaged = json.loads((finished[0] / "metrics.json").read_text())["choices"]["loss"]
    assert damaged not in {r["configuration"].split("=")[1] for r in summary["robustness"]}
    assert len(summary["robustness"]) == 1


def test_a_multi_task_run_that_kept_its_scores_refers_by_score_margin(sweep):  # noqa: F811
    import torch

    from mtcsnn.grading.selective import risk_coverage
    from mtcsnn.reporting.predictions import read_predictions
    from mtcsnn.run.files import val_predictions_csv

    rng = np.random.default_rng(0)
    val_grades = np.arange(40) % 5
    expected = []
    for folder in sorted(p for p in sweep.iterdir() if (p / "test_predictions.csv").is_file()):
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["best_epoch_number"] = 2
        (folder / "metrics.json").write_text(json.dumps(metrics))
        # epoch 0 of the file is noise; epoch 1 (the tested checkpoint's) places grades at k
        val_scores = [torch.from_numpy(rng.normal(size=40)), torch.from_numpy(val_grades * 1.0)]
        probs = [torch.full((40, 5), 0.2)] * 2
        index, grades = torch.arange(40), torch.from_numpy(val_grades)
        (folder / "val_predictions.csv").write_text(
            val_predictions_csv([0, 1], index, grades, probs, val_scores)
        )
        test_grades, test_probs = read_predictions(folder / "test_predictions.csv")
        scores = test_grades + rng.normal(scale=0.6, size=len(test_grades))
        table = (folder / "test_predictions.csv").read_text().splitlines()
        rows = [
            line.rsplit(",", 1)[0] + f",{s:.6f}" for line, s in zip(table[1:], scores, strict=True)
        ]
        (folder / "test_predictions.csv").write_text("\n".join([table[0], *rows]) + "\n")
        if metrics["choices"]["loss"] == "mtcsnn":
            boundaries = np.arange(4) + 0.5
            margin = -np.abs(scores[:, None] - boundaries).min(1) / np.std(val_grades * 1.0)
            expected.append(risk_coverage(test_grades, test_probs, margin)["aurc"])
    assert main([str(sweep), "--bootstrap", "100"]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    rows = {
        (r["configuration"], r["models"], r["uncertainty"]): r
        for r in summary["referring_the_uncertain"]
    }
    single = rows["loss=mtcsnn", "single", "score_margin"]
    assert single["aurc"]["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert ("loss=mtcsnn", "ensemble", "score_margin") in rows
    # CE's score head is not trained: no margin row for it
    assert not [key for key in rows if key[0] == "loss=ce" and key[2] == "score_margin"]
    assert "| score_margin |" in (sweep / "results.md").read_text()

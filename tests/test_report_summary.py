"""``summary.json``: the report's numbers for programs, the same as its page shows."""

import json
import re

import numpy as np
from test_report import sweep, write_run  # noqa: F401  (the fixture and the run writer)

from mtcsnn.report import main


def leaves(value) -> list[float]:
    """Every number in a JSON document."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in leaves(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


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
    for value in leaves(summary):
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

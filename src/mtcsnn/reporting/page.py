"""The report's page, ``results.md``: tables of grouped runs (see :mod:`mtcsnn.reporting`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtcsnn.data.corruptions import CORRUPTIONS
from mtcsnn.grading.comparison import REFERABLE_CUT
from mtcsnn.reporting.comparing import (
    HELD_OUT,
    MIN_SEEDS_TO_CHOOSE,
    SCREENING,
    screening_summary,
    summarise,
)
from mtcsnn.reporting.cross_validation import FoldSet, cv_lines
from mtcsnn.reporting.findings import Findings
from mtcsnn.reporting.grouping import label
from mtcsnn.reporting.markdown import difference_cells, md, mean_std, seeds_cell
from mtcsnn.reporting.referring import FIGURES as REFERRAL_FIGURES
from mtcsnn.reporting.runs import DEBUG_RUN, METRICS, OPTIONAL_METRICS, UNTESTED_TRIAL, Run


def results_markdown(findings: Findings, root: Path | str) -> str:
    """The page of a report of the runs under ``root``."""
    groups, compared, pooled = findings.groups, findings.compared, findings.pooled
    # columns every run has: off-by-one accuracy is missing from runs of older versions
    extra = [
        m
        for m in OPTIONAL_METRICS
        if all(m in r.metrics["test"] for runs in groups.values() for r in runs)
    ]
    held_out = any(HELD_OUT in summarise(runs) for runs in groups.values())
    lines = [
        f"# Results: {md(root)}",
        "",
        "Test metrics of the best-val checkpoint of each run, mean +/- std over seeds.",
        "",
        "| configuration | seeds | test AUROC | test accuracy | test quadratic kappa | test MAE "
        + "".join(f"| test {OPTIONAL_METRICS[m]} " for m in extra)
        + "| val AUROC "
        + ("| held-out val AUROC " if held_out else "")
        + "|",
        "|---|---|---|---|---|---|---|" + "---|" * (len(extra) + held_out),
    ]
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        s = summarise(runs)
        cells = [mean_std(*s[f"test/{m}"]) for m in (*METRICS, *extra)]
        columns = ("val/auroc", HELD_OUT) if held_out else ("val/auroc",)
        cells += [mean_std(*s[key]) if key in s else "-" for key in columns]
        lines.append(f"| {md(label(config))} | {seeds_cell(runs)} | " + " | ".join(cells) + " |")
    if held_out:
        lines += [
            "",
            "Val AUROC: the best epoch's, on the images that chose it. Held-out val AUROC: the "
            "epoch chosen on one half of the val images, scored on the other, both ways averaged "
            "(runs that kept `val_predictions.csv`); the noise of a val curve does not lift it.",
        ]
    if compared:
        lines += [
            "",
            "## MTCSNN vs CE, same backbone and seed",
            "",
            "Mean over seeds of (MTCSNN - CE) on the test set; 95% CI from a paired bootstrap "
            "over test images. CE is `loss=ce`, or lambda 0 where a sweep has no `loss=ce` runs.",
            "",
            "| configuration | vs | paired seeds | AUROC difference [95% CI] "
            "| accuracy difference [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for row in compared:
            cells = difference_cells(row)
            lines.append(
                f"| {md(label(row['config']))} | {md(label(row['baseline']))} | {row['seeds']} | "
                + " | ".join(cells)
                + " |"
            )
        if pooled:
            cells = difference_cells(pooled)
            lines += [
                f"| all {pooled['configs']} configurations above, pooled | CE | "
                f"{pooled['pairs']} pairs | " + " | ".join(cells) + " |",
                "",
                "Pooled: the mean over every pair above, with a 95% CI from a bootstrap that draws "
                "the pairs as well as the test images, so it also counts how much the difference "
                "moves between seeds and configurations. Each pair counts once: pool only runs "
                "that trained differently (not one sweep's runs again under another name).",
            ]
    if findings.ensembles:
        lines += [
            "",
            "## Seed ensembles",
            "",
            "Each configuration's seeds together: the class probabilities of their best-val "
            "checkpoints averaged (no choice made on test). Against the CE ensemble of the same "
            "settings: the difference with a bootstrap 95% CI over test images.",
            "",
            "| configuration | seeds | test AUROC | test accuracy | test quadratic kappa "
            "| test MAE | vs | AUROC difference [95% CI] | accuracy difference [95% CI] |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in findings.ensembles:
            scores = [f"{row['scores'][m]:.4f}" for m in ("auroc", "acc", "kappa", "mae")]
            if "baseline" in row:
                diffs = [md(label(row["baseline"])), *difference_cells(row)]
            else:
                diffs = ["-", "-", "-"]
            lines.append(
                f"| {md(label(row['config']))} | {row['seeds']} | "
                + " | ".join(scores + diffs)
                + " |"
            )
    lines += cv_lines(findings.folds, findings.folds_compared)
    lines += screening_lines(groups, compared)
    lines += referral_lines(findings.referrals)
    lines += robustness_lines(findings.robustness)
    lines += chosen_on_val_lines(groups, findings.rankings, findings.choices, findings.margins)
    lines += score_decoding_lines(groups)
    lines += held_out_problem_lines(groups)
    lines += skipped_lines(findings.skipped)
    return "\n".join(lines) + "\n"


def screening_lines(groups: dict[tuple, list[Run]], compared: list[dict]) -> list[str]:
    """Referable DR and calibration on test, per configuration, and MTCSNN - CE in referable
    AUROC; only configurations whose runs all measured them."""
    vs_ce = {row["config"]: row for row in compared}
    rows = []
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        s = screening_summary(runs)
        if "referable.auroc" not in s:
            continue
        cells = [mean_std(*s[k]) if k in s else "-" for k in SCREENING if k != "nll"]
        row = vs_ce.get(config)
        if row is not None and "referable_auroc" in row:
            point, low, high = row["referable_auroc"]
            cells.append(f"{point:+.4f} [{low:+.4f}, {high:+.4f}]")
        else:
            cells.append("-")
        rows.append(f"| {md(label(config))} | {seeds_cell(runs)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    cut = next(
        (
            r.metrics["test"]["referable"].get("cut")
            for runs in groups.values()
            for r in runs
            if isinstance((r.metrics.get("test") or {}).get("referable"), dict)
        ),
        REFERABLE_CUT,
    )
    return [
        "",
        f"## Referable DR (grade >= {cut}) and calibration (test)",
        "",
        "Referable AUROC: of P(grade >= cut), the sum of those grades' probabilities. "
        "Sensitivity and specificity: referring at the threshold each run chose on val (its "
        "`grading` settings; a cross-validated configuration's fold ensemble: the threshold "
        "chosen on its out-of-fold predictions). ECE: expected calibration error of the top "
        "grade's probability, 15 bins. Mean +/- std over seeds. MTCSNN - CE: referable AUROC "
        f"(grade >= {REFERABLE_CUT}) on the same seed, 95% CI from a paired bootstrap over "
        "test images.",
        "",
        "| configuration | seeds | referable AUROC | sensitivity | specificity | threshold "
        "| ECE | Brier | MTCSNN - CE referable AUROC [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def referral_lines(rows: list[dict]) -> list[str]:
    """Accuracy as the most uncertain test images are referred to a person."""
    if not rows:
        return []
    lines = [
        "",
        "## Referring the uncertain (test)",
        "",
        "The images each model is least sure of go to a person; the rest are graded. AURC: the "
        "area under the risk-coverage curve (mean error over every share kept; lower is "
        "better). At 10% referred: accuracy and quadratic kappa of the 90% kept, and the "
        "screening sensitivity (referable images the model refers at its val threshold or "
        "sends to a person, of all referable images). Uncertainty: 1 - top probability, the "
        "entropy, or the seed ensemble's disagreement. Single models: mean +/- std over seeds.",
        "",
        "| configuration | models | uncertainty | AURC | accuracy at 10% referred "
        "| kappa at 10% referred | screening sensitivity at 10% referred |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [mean_std(*row[f]) if f in row else "-" for f in REFERRAL_FIGURES]
        models = "single" if row["models"] == "single" else f"ensemble of {row['seeds']}"
        lines.append(
            f"| {md(label(row['config']))} | {models} | {row['uncertainty']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def robustness_lines(rows: list[dict]) -> list[str]:
    """AUROC lost to each corruption, and the corruption error against CE."""
    if not rows:
        return []
    names = sorted({c for row in rows for c in row["drop"]}, key=list(CORRUPTIONS).index)
    lines = [
        "",
        "## Robustness (test, MedMNIST-C corruptions)",
        "",
        "Test AUROC lost to each corruption: clean minus the mean over severities 1-5 (and "
        "seeds). mCE vs CE: per corruption the sum over severities of 1 - AUROC, over the CE "
        "configuration's, averaged over corruptions (1.00: as robust as CE; lower is better).",
        "",
        "| configuration | seeds | clean AUROC | mean drop | mCE vs CE | "
        + " | ".join(names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for row in rows:
        mce = f"{row['mce']:.4f}" if "mce" in row else "-"
        drops = [f"{row['drop'][c]:+.4f}" if c in row["drop"] else "-" for c in names]
        lines.append(
            f"| {md(label(row['config']))} | {row['seeds']} | {row['clean_auroc']:.4f} | "
            f"{row['mean_drop']:+.4f} | {mce} | " + " | ".join(drops) + " |"
        )
    return lines


def held_out_problem_lines(groups: dict[tuple, list[Run]]) -> list[str]:
    """Runs that kept val predictions the held-out val AUROC could not use, and why."""
    listed = [r for runs in groups.values() for r in runs if r.held_out_problem]
    if not listed:
        return []
    lines = ["", "## Runs counted without a held-out val AUROC", ""]
    listed.sort(key=lambda r: r.path)
    lines += [f"- {md(r.path)}: {md(r.held_out_problem)}" for r in listed]
    return lines


def skipped_lines(skipped: list[tuple[Path, str]]) -> list[str]:
    """The folders that are not results, by why: debug runs, untested trials, failed, the rest."""
    kinds = {
        "Debug runs (not counted)": lambda why: why == DEBUG_RUN,
        "Search trials not tested": lambda why: why == UNTESTED_TRIAL,
        "Failed runs": lambda why: why.startswith("failed:"),
        "Unfinished or unreadable runs": lambda why: True,
    }
    lines, left = [], list(skipped)
    for title, belongs in kinds.items():
        listed = [(path, why) for path, why in left if belongs(why)]
        left = [item for item in left if item not in listed]
        if listed:
            lines += ["", f"## {title}", ""]
            for path, why in listed:
                reason = why.removeprefix("failed: ")
                said = "" if why in (DEBUG_RUN, UNTESTED_TRIAL) else f": {md(reason)}"
                lines.append(f"- {md(path)}{said}")
    return lines


def score_decoding_lines(groups: dict[tuple, list[Run]]) -> list[str]:
    """Classifier vs severity score (thresholds fitted on val, pairwise) on test, per config."""
    rows = []
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        decoded = [r for r in runs if "score_decoding" in r.metrics]
        if not decoded:
            continue
        cells = []
        for way in ("classifier", "thresholds", "pairwise"):
            for m in ("acc", "kappa", "mae"):
                values = [
                    r.metrics["test"][m]
                    if way == "classifier"
                    else r.metrics["score_decoding"][way]["test"][m]
                    for r in decoded
                ]
                std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
                cells.append(mean_std(float(np.mean(values)), std))
        rows.append(f"| {md(label(config))} | {len(decoded)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = " | ".join(
        f"{way} {m}"
        for way in ("classifier", "thresholds", "pairwise")
        for m in ("acc", "kappa", "MAE")
    )
    return [
        "",
        "## The severity score as a grader (test)",
        "",
        "Grades from the classifier head, from the score by thresholds fitted on val, and by "
        "pairwise inference against the training images; mean +/- std over seeds.",
        "",
        f"| configuration | seeds | {head} |",
        "|---|---|" + "---|" * 9,
        *rows,
    ]


def chosen_on_val_lines(
    groups: dict[tuple, list[Run]], rankings: list[dict], choices: list[dict], margins: list[dict]
) -> list[str]:
    rows = rankings
    if not rows:
        return []
    lines = [
        "",
        "## Chosen on val",
        "",
        "Per loss, the configurations by mean val AUROC over their seeds (the held-out val "
        "AUROC where every run of the loss has it, else the best epoch's), the chosen one first; "
        "test is shown beside it and plays no part in the order. Configurations with fewer than "
        f"{MIN_SEEDS_TO_CHOOSE} seeds are listed last, without a rank: too few to choose on.",
        "",
        "| loss | ranked by | rank | configuration | seeds | val AUROC | held-out val AUROC "
        "| test AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        # a cross-validated configuration's val figures are its out-of-fold ones
        cross_validated = all(
            isinstance(r, FoldSet) for c in row["ranked"] + row["too_few"] for r in groups[c]
        )
        by = "held-out val AUROC" if row["metric"] == HELD_OUT else "val AUROC"
        by = "out-of-fold AUROC" if cross_validated else by
        listed = [(str(i), c) for i, c in enumerate(row["ranked"], 1)]
        listed += [("-", c) for c in row["too_few"]]
        for rank, config in listed:
            s = summarise(groups[config])
            name = f"**{md(label(config))}**" if rank == "1" else md(label(config))
            held_out = mean_std(*s[HELD_OUT]) if HELD_OUT in s else "-"
            lines.append(
                f"| {md(row['loss'])} | {by} | {rank} | {name} | {seeds_cell(groups[config])} | "
                f"{mean_std(*s['val/auroc'])} | {held_out} | {mean_std(*s['test/auroc'])} |"
            )
    if margins:
        lines += [
            "",
            "The chosen configuration against each it was ranked above, seed by seed: on test "
            "(paired bootstrap 95% CI over the test images), and out of fold where both were "
            "cross-validated (over the pooled images: the figures that made the choice).",
            "",
            "| chosen | over | paired seeds | test AUROC difference [95% CI] "
            "| test accuracy difference [95% CI] | out-of-fold AUROC difference [95% CI] "
            "| out-of-fold accuracy difference [95% CI] |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in margins:
            oof = difference_cells(row["out_of_fold"]) if row.get("out_of_fold") else ["-", "-"]
            lines.append(
                f"| {md(label(row['config']))} | {md(label(row['baseline']))} | {row['seeds']} | "
                + " | ".join([*difference_cells(row), *oof])
                + " |"
            )
    if choices:
        lines += [
            "",
            "Each loss with the settings its val chose, against CE with its own: mean over seeds "
            "of the difference, 95% CI from a paired bootstrap over test images (ECE and AURC: "
            "lower is better); mCE: the chosen one's corruption error over CE's choice's.",
            "",
            "| chosen | vs CE's choice | paired seeds | AUROC difference [95% CI] "
            "| accuracy difference [95% CI] | referable AUROC difference [95% CI] "
            "| ECE difference [95% CI] | AURC difference [95% CI] | mCE vs CE's choice |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in choices:
            cells = difference_cells(row, ("auroc", "acc", "referable_auroc", "ece", "aurc"))
            mce = f"{row['mce']:.4f}" if row.get("mce") is not None else "-"
            lines.append(
                f"| {md(label(row['config']))} | {md(label(row['baseline']))} | {row['seeds']} | "
                + " | ".join([*cells, mce])
                + " |"
            )
    return lines

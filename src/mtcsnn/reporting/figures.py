"""The report's figures from grouped runs: confusion matrix, ROC curves and val curves of the
configuration val chose, and test AUROC against lambda."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from mtcsnn.reporting.comparing import best_configuration
from mtcsnn.reporting.grouping import label
from mtcsnn.reporting.runs import Run, val_curve
from mtcsnn.writing import write_atomic


def shown(text: str) -> str:
    """A label as figure text: a ``$`` in a config value or folder name is shown as a dollar
    sign, not read by matplotlib as the start of a formula (which can stop the report)."""
    return text.replace("$", r"\$")


def save(fig, path: Path) -> Path:
    """The figure as a PNG, whole or not at all, never through a symlink planted at ``path``."""
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    return path


def write_figures(groups: dict[tuple, list[Run]], out: Path) -> list[Path]:
    # Figure objects without pyplot: no global backend switch, so this also works inside a
    # notebook without breaking its inline plots.
    import torch
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from torchmetrics.functional.classification import multiclass_roc

    written = []
    best = best_configuration(groups)
    best_runs = groups[best]
    title = f"{shown(label(best))} ({len(best_runs)} seed(s), best mean val AUROC)"

    confusion = sum(np.array(r.metrics["test_confusion"]) for r in best_runs)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(
            j,
            i,
            int(v),
            ha="center",
            va="center",
            color="white" if v > confusion.max() / 2 else "black",
        )
    ax.set(xlabel="predicted grade", ylabel="true grade", title="test confusion, summed over seeds")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    written.append(save(fig, out / "confusion_matrix.png"))

    grades = torch.from_numpy(np.concatenate([r.grades for r in best_runs]))
    probs = torch.from_numpy(np.concatenate([r.probs for r in best_runs])).float()
    fpr, tpr, _ = multiclass_roc(probs, grades, num_classes=probs.shape[1])
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for c in range(probs.shape[1]):
        ax.plot(fpr[c].numpy(), tpr[c].numpy(), label=f"grade {c} vs rest")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="test ROC, one vs rest (seeds pooled)",
    )
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    written.append(save(fig, out / "roc_curves.png"))

    curves = {}
    for config, runs in sorted(groups.items(), key=lambda kv: label(kv[0])):
        found = [c for c in (val_curve(r) for r in runs) if c is not None]
        if found:
            length = min(len(c[1]) for c in found)
            curves[shown(label(config))] = (
                found[0][0][:length],
                np.mean([c[1][:length] for c in found], 0),
            )
    if curves:
        fig = Figure(figsize=(7, 4.5))
        ax = fig.subplots()
        for name, (epochs, mean) in curves.items():
            ax.plot(epochs + 1, mean, label=name)  # counted from 1, as the console counts
        ax.set(xlabel="epoch", ylabel="val AUROC (mean over seeds)", title="validation curves")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(save(fig, out / "val_curves.png"))

    lam_figure = lambda_figure(groups, out)
    if lam_figure:
        written.append(lam_figure)
    written.append(reliability_figure(groups, out))
    written.append(risk_coverage_figure(groups, out))
    return written


# panels of the per-configuration figures: more configurations are left out, and said so
MAX_PANELS = 12


def _sorted_groups(groups: dict[tuple, list[Run]]) -> list[tuple[tuple, list[Run]]]:
    return sorted(groups.items(), key=lambda kv: label(kv[0]))[:MAX_PANELS]


def reliability_figure(groups: dict[tuple, list[Run]], out: Path) -> Path:
    """Per configuration (seeds pooled): accuracy of the test images in each of 15 bins of
    top-grade probability, against that probability; the diagonal is perfect calibration."""
    from matplotlib.figure import Figure

    from mtcsnn.grading.calibration import ECE_BINS

    shown_groups = _sorted_groups(groups)
    cols = min(3, len(shown_groups))
    rows = -(-len(shown_groups) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for ax, (config, runs) in zip(axes, shown_groups, strict=False):
        probs = np.concatenate([r.probs for r in runs])
        grades = np.concatenate([r.grades for r in runs])
        confidence, correct = probs.max(1), probs.argmax(1) == grades
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, ECE_BINS - 1)
        filled = [b for b in range(ECE_BINS) if (which == b).any()]
        accuracy = [correct[which == b].mean() for b in filled]
        ax.bar(edges[filled], accuracy, width=1 / ECE_BINS, align="edge", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-grade probability", ylabel="accuracy")
        ax.set_title(shown(label(config)), fontsize=7)
    for ax in axes[len(shown_groups) :]:
        ax.set_visible(False)
    left_out = len(groups) - len(shown_groups)
    more = f"; {left_out} more configuration(s) not drawn" if left_out else ""
    fig.suptitle(f"test reliability, seeds pooled ({ECE_BINS} bins){more}", fontsize=8)
    fig.tight_layout()
    return save(fig, out / "reliability.png")


def risk_coverage_figure(groups: dict[tuple, list[Run]], out: Path) -> Path:
    """Test accuracy of the images kept as the least sure (1 - top probability) are referred,
    mean over seeds, per configuration."""
    from matplotlib.figure import Figure

    from mtcsnn.grading.selective import risk_coverage, uncertainty

    grid = np.linspace(0.05, 1.0, 96)
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for config, runs in _sorted_groups(groups):
        curves = []
        for run in runs:
            curve = risk_coverage(run.grades, run.probs, uncertainty(run.probs, "max_probability"))
            curves.append(np.interp(grid, curve["coverage"][::-1], curve["accuracy"][::-1]))
        ax.plot(grid, np.mean(curves, 0), label=shown(label(config)))
    ax.invert_xaxis()  # from grading every image to referring most of them
    ax.set(
        xlabel="share of test images graded (the rest referred)",
        ylabel="accuracy of the graded (mean over seeds)",
        title="referring the least sure first (1 - top probability)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out / "risk_coverage.png")


def lambda_figure(groups: dict[tuple, list[Run]], out: Path) -> Path | None:
    """Test AUROC against lambda (CE counts as lambda 0), one line per other setting."""
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for config, runs in groups.items():
        settings = dict(config)
        for run in runs:
            loss = run.settings.get("choices.loss")
            lam = 0.0 if loss == "ce" else run.settings.get("config.loss.lam")
            if lam is None:
                continue
            rest = tuple(
                (k, v)
                for k, v in settings.items()
                if k != "choices.loss" and not k.startswith("config.loss.")
            )
            series[shown(label(rest))][float(lam)].append(run.metrics["test"]["auroc"])
    if not any(len(points) > 1 for points in series.values()):
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for name, points in sorted(series.items()):
        lams = sorted(points)
        means = [np.mean(points[x]) for x in lams]
        stds = [np.std(points[x], ddof=1) if len(points[x]) > 1 else 0.0 for x in lams]
        ax.errorbar(lams, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set(
        xlabel="lambda", ylabel="test AUROC (mean +/- std over seeds)", title="test AUROC vs lambda"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out / "auroc_vs_lambda.png")

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
    return written


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

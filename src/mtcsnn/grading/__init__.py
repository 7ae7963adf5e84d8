"""How grades are scored: the metrics of every run, and grades decoded from the severity score."""

from __future__ import annotations

# what every run logs on val each epoch, so what may choose its checkpoint (val/<name>); recall
# is logged per grade, as recall_0 ...
MONITORABLE = ("auroc", "acc", "kappa", "mae", "acc_within1", "loss")
# grade metrics where lower is better; the others (AUROC, accuracy, kappa, recall) are higher-better
LOWER_IS_BETTER = frozenset({"loss", "mae"})


def metric_mode(metric: str) -> str:
    """``"min"`` for a metric where lower is better (``val/loss``, ``val/mae``), else ``"max"``."""
    return "min" if str(metric).rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"

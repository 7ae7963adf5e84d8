"""Pair losses: the MTCSNN multi-task loss and the plain cross-entropy baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtcsnn.losses.base import (
    BranchOutput,
    PairLoss,
    check_difference,
    check_label_smoothing,
    check_lam,
)


def pair_cross_entropy(
    out_a: BranchOutput,
    out_b: BranchOutput,
    grade_a: torch.Tensor,
    grade_b: torch.Tensor,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """CE on each branch's grades; the classification part of every pair loss."""
    ce_a = F.cross_entropy(out_a.logits, grade_a, label_smoothing=label_smoothing)
    ce_b = F.cross_entropy(out_b.logits, grade_b, label_smoothing=label_smoothing)
    return {"loss": ce_a + ce_b, "ce_a": ce_a, "ce_b": ce_b}


def score_difference_mse(
    score_a: torch.Tensor,
    score_b: torch.Tensor,
    grade_a: torch.Tensor,
    grade_b: torch.Tensor,
    difference: str = "absolute",
) -> torch.Tensor:
    """MSE between the score difference and the grade difference of each pair."""
    check_difference(difference)
    score_diff = score_a - score_b
    grade_diff = (grade_a - grade_b).to(score_diff.dtype)
    if difference == "absolute":
        score_diff, grade_diff = score_diff.abs(), grade_diff.abs()
    return F.mse_loss(score_diff, grade_diff)


class PairCrossEntropyLoss(PairLoss):
    """The plain ResNet baseline: CE(a) + CE(b), classification only.

    ``label_smoothing`` (null or 0: none) spreads that share of each target over all grades.
    """

    def __init__(self, label_smoothing: float | None = None) -> None:
        super().__init__()
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing or 0.0

    def forward(
        self, out_a: BranchOutput, out_b: BranchOutput, grade_a: torch.Tensor, grade_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return pair_cross_entropy(out_a, out_b, grade_a, grade_b, self.label_smoothing)


class MultiTaskLoss(PairLoss):
    """MTCSNN: CE(a) + CE(b) + lam * MSE(|s_a - s_b|, |y_a - y_b|).

    ``difference="signed"`` compares ``s_a - s_b`` with ``y_a - y_b`` instead, which also fixes
    the direction of the severity score.
    """

    def __init__(
        self, lam: float = 0.5, difference: str = "absolute", label_smoothing: float | None = None
    ) -> None:
        super().__init__()
        check_lam(lam)
        check_difference(difference)
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing or 0.0
        self.lam = lam
        self.difference = difference

    @property
    def trains_score(self) -> bool:  # type: ignore[override]
        """Whether the severity-score head learns anything (it does not at lambda 0)."""
        return self.lam > 0

    def forward(
        self, out_a: BranchOutput, out_b: BranchOutput, grade_a: torch.Tensor, grade_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        terms = pair_cross_entropy(out_a, out_b, grade_a, grade_b, self.label_smoothing)
        reg = score_difference_mse(out_a.score, out_b.score, grade_a, grade_b, self.difference)
        terms["reg"] = reg
        terms["loss"] = terms["loss"] + self.lam * reg
        return terms

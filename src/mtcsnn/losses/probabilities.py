"""Class probabilities from ordinal outputs: pure functions, so the metrics see 5 probabilities
whatever the head (softmax, CORAL, CORN or a regressed grade)."""

from __future__ import annotations

import torch


def cumulative_to_class(p_greater: torch.Tensor) -> torch.Tensor:
    """``P(y > k)`` for k = 0..K-2, shape (N, K-1), to ``P(y = k)`` for k = 0..K-1, shape (N, K).

    P(y=0) = 1 - P(y>0), P(y=k) = P(y>k-1) - P(y>k), P(y=K-1) = P(y>K-2). With rank-consistent
    cumulative probabilities (CORAL, CORN) all are >= 0; clamping only absorbs rounding.
    """
    ones = torch.ones_like(p_greater[:, :1])
    zeros = torch.zeros_like(p_greater[:, :1])
    upper = torch.cat([ones, p_greater], dim=1)
    lower = torch.cat([p_greater, zeros], dim=1)
    return (upper - lower).clamp_min(0)


def coral_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """CORAL: each logit k is the log-odds of ``y > k``."""
    return cumulative_to_class(torch.sigmoid(logits))


def corn_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """CORN: logit k is the log-odds of ``y > k`` given ``y > k-1``; chain them."""
    return cumulative_to_class(torch.cumprod(torch.sigmoid(logits), dim=1))


def score_probabilities(
    score: torch.Tensor, num_classes: int = 5, width: float = 0.5
) -> torch.Tensor:
    """A regressed grade to class probabilities: a Gaussian of ``width`` grades around it.

    ``argmax`` is the rounded (and clipped) grade, and each class's probability falls with the
    distance of the score from that grade, which is what the ranking metrics need.
    """
    grades = torch.arange(num_classes, device=score.device, dtype=score.dtype)
    return torch.softmax(-((score.unsqueeze(1) - grades) ** 2) / (2 * width**2), dim=1)

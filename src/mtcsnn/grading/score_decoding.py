"""Grades from the severity-score head: thresholds fitted on val, and pairwise inference.

Pure functions on score tensors, so they are tested without a model. The score of a
multi-task model is trained only through differences, so its direction is free: thresholds
orient it by its correlation with the grade on the data they are fitted on.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_cohen_kappa

from mtcsnn.losses.base import PairLoss


def fit_thresholds(
    scores: torch.Tensor, grades: torch.Tensor, num_classes: int = 5
) -> tuple[float, torch.Tensor]:
    """Direction (+1/-1) and K-1 increasing thresholds that maximise accuracy on these images.

    The best monotone split of the sorted scores into K grade bands, by dynamic programming
    (exact, O(N K)); a threshold sits half-way between the two scores it separates.
    """
    scores, grades = scores.double(), grades.long()
    direction = 1.0 if torch.corrcoef(torch.stack([scores, grades.double()]))[0, 1] >= 0 else -1.0
    order = torch.argsort(direction * scores)
    sorted_scores, sorted_grades = (direction * scores)[order], grades[order]
    n = len(scores)
    # prefix[k][i]: images of grade k among the first i sorted ones
    onehot = torch.nn.functional.one_hot(sorted_grades, num_classes).double()
    prefix = torch.cat([torch.zeros(1, num_classes, dtype=torch.double), onehot.cumsum(0)]).T
    best = prefix[0].clone()  # grade 0 for the first i images
    cuts: list[torch.Tensor] = []
    for k in range(1, num_classes):
        # best[i] for grades <= k: max over j <= i of (best_{k-1}[j] - prefix_k[j]) + prefix_k[i]
        gain = best - prefix[k]
        running, arg = torch.cummax(gain, dim=0)
        best = running + prefix[k]
        cuts.append(arg)
    # walk back: where each band starts
    starts = []
    i = n
    for k in range(num_classes - 1, 0, -1):
        j = int(cuts[k - 1][i])
        starts.append(j)
        i = j
    starts.reverse()
    padded = torch.cat([sorted_scores[:1] - 1, sorted_scores, sorted_scores[-1:] + 1])
    thresholds = torch.stack([(padded[s] + padded[s + 1]) / 2 for s in starts])
    return direction, thresholds.float()


def apply_thresholds(scores: torch.Tensor, direction: float, thresholds: torch.Tensor):
    """Grade of each score: the number of thresholds it lies above."""
    return torch.searchsorted(thresholds.double(), (direction * scores.double()).contiguous())


def pairwise_grades(
    scores: torch.Tensor,
    ref_scores: torch.Tensor,
    ref_grades: torch.Tensor,
    num_classes: int = 5,
    difference: str = "absolute",
) -> torch.Tensor:
    """Each image's grade from its score differences to reference images of known grade.

    The grade y minimising the mean over references of (score difference - grade difference)^2,
    with differences as the multi-task loss compared them (``absolute`` or ``signed``).
    """
    candidates = torch.arange(num_classes, dtype=torch.double)
    d_score = scores.double().unsqueeze(1) - ref_scores.double().unsqueeze(0)  # N x R
    d_grade = candidates.unsqueeze(1) - ref_grades.double().unsqueeze(0)  # K x R
    if difference == "absolute":
        d_score, d_grade = d_score.abs(), d_grade.abs()
    # mean_r (a - b)^2 = mean a^2 - 2 mean a b + mean b^2, for all (image, candidate) at once
    r = d_score.shape[1]
    cost = (
        (d_score**2).mean(1, keepdim=True)
        - 2 * d_score @ d_grade.T / r
        + (d_grade**2).mean(1).unsqueeze(0)
    )
    return cost.argmin(1)


def label_metrics(pred: torch.Tensor, grades: torch.Tensor, num_classes: int = 5) -> dict:
    """Accuracy, quadratic kappa, MAE and off-by-one accuracy of hard grade predictions."""
    pred, grades = pred.long(), grades.long()
    error = (pred - grades).abs().float()
    return {
        "acc": float((error == 0).float().mean()),
        "kappa": float(multiclass_cohen_kappa(pred, grades, num_classes, weights="quadratic")),
        "mae": float(error.mean()),
        "acc_within1": float((error <= 1).float().mean()),
    }


@torch.no_grad()
def split_scores(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 256):
    """Severity scores of uint8 images (evaluation mode, no augmentation)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    scores = [
        net(chunk.to(device).float().div_(255)).score.float().cpu()
        for chunk in images.split(batch_size)
    ]
    net.train(was_training)
    return torch.cat(scores)


def decode_scores(net: torch.nn.Module, splits: dict, difference: str = "absolute") -> dict:
    """Val and test metrics of the two score decodings; thresholds fitted on val only.

    ``splits`` maps train/val/test to ``(uint8 images, grades)``; the training images are the
    references of pairwise inference.
    """
    scores = {name: split_scores(net, images) for name, (images, _) in splits.items()}
    grades = {name: g for name, (_, g) in splits.items()}
    direction, thresholds = fit_thresholds(scores["val"], grades["val"])
    out: dict = {
        "thresholds": {"direction": direction, "values": thresholds.tolist()},
        "pairwise": {"references": "train", "difference": difference},
    }
    for stage in ("val", "test"):
        by_threshold = apply_thresholds(scores[stage], direction, thresholds)
        by_pairs = pairwise_grades(
            scores[stage], scores["train"], grades["train"], difference=difference
        )
        out["thresholds"][stage] = label_metrics(by_threshold, grades[stage])
        out["pairwise"][stage] = label_metrics(by_pairs, grades[stage])
    return out


def decode_if_trained(net: torch.nn.Module, loss: PairLoss, splits: dict | None) -> dict | None:
    """:func:`decode_scores` for a network whose loss trains the score; None otherwise."""
    if not loss.trains_score or splits is None:
        return None
    return decode_scores(net, splits, loss.difference)

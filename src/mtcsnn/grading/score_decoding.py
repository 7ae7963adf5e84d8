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


# the most (image, reference) differences held at once where they are computed one by one: a
# fixed 8 MB per intermediate tensor (of doubles), whatever the number of images
CHUNK_ELEMENTS = 1 << 20


def pairwise_grades(
    scores: torch.Tensor,
    ref_scores: torch.Tensor,
    ref_grades: torch.Tensor,
    num_classes: int = 5,
    difference: str = "absolute",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Each image's grade from its score differences to reference images of known grade.

    The grade y minimising the mean over references of (score difference - grade difference)^2,
    with differences as the multi-task loss compared them (``absolute`` or ``signed``).

    Memory is linear in the images and references: the costs come from sums over the sorted
    references (:func:`pairwise_costs`), never from an images x references matrix. An image
    whose two best grades are closer than the rounding of either way of computing lies within
    is decided by the direct sum (:func:`direct_costs`), ``chunk_elements`` differences at a
    time, so every grade is the one the direct sum gives.
    """
    candidates = torch.arange(num_classes, dtype=torch.double)
    scores, ref_scores = scores.double().reshape(-1), ref_scores.double().reshape(-1)
    ref_grades = ref_grades.double().reshape(-1)
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.long)
    cost = pairwise_costs(scores, ref_scores, ref_grades, candidates, difference)
    # the rounding of either sum is at most (references x epsilon) times its largest term
    size = scores.abs().max() + (ref_scores.abs().max() if len(ref_scores) else 0) + num_classes
    epsilon = torch.finfo(torch.double).eps
    tolerance = 8 * epsilon * max(1000, len(ref_scores)) * float(size**2)
    if num_classes > 1:
        best_two = cost.topk(2, dim=1, largest=False).values
        close = ~(best_two[:, 1] - best_two[:, 0] > tolerance)  # NaN included
    else:
        close = torch.zeros(len(scores), dtype=torch.bool)
    pred = cost.argmin(1)
    rows = close.nonzero().reshape(-1)
    step = max(1, chunk_elements // max(1, len(ref_scores)))
    for chunk in rows.split(step):
        exact = direct_costs(scores[chunk], ref_scores, ref_grades, candidates, difference)
        pred[chunk] = exact.argmin(1)
    return pred


def pairwise_costs(
    scores: torch.Tensor,
    ref_scores: torch.Tensor,
    ref_grades: torch.Tensor,
    candidates: torch.Tensor,
    difference: str = "absolute",
) -> torch.Tensor:
    """N x K: mean over references of (score difference - grade difference)^2 for each image
    and candidate grade, in O((N + R) K) memory and O((N + R) log R K) time.

    mean_r (a - b)^2 = mean a^2 - 2 mean a b + mean b^2. With a = s - r (signed) each term is
    a sum of moments of the references; with a = |s - r| the cross term splits at s: the
    references below s and those above, read from prefix sums over the sorted references.
    Scores are centred on the references' mean first, which the differences do not see.
    """
    n_refs = len(ref_scores)
    if n_refs == 0:
        return torch.full((len(scores), len(candidates)), float("nan"), dtype=torch.double)
    centre = ref_scores.mean()
    s, r = scores - centre, ref_scores - centre
    d_grade = candidates.unsqueeze(1) - ref_grades.unsqueeze(0)  # K x R
    if difference == "absolute":
        d_grade = d_grade.abs()
    mean_sq_score = (s**2 - 2 * s * r.mean() + (r**2).mean()).unsqueeze(1)  # N x 1
    mean_sq_grade = (d_grade**2).mean(1).unsqueeze(0)  # 1 x K
    if difference == "absolute":
        order = torch.argsort(r)
        r_sorted, weights = r[order], d_grade[:, order]  # K x R, by increasing score
        zero = torch.zeros(len(candidates), 1, dtype=torch.double)
        below_w = torch.cat([zero, weights.cumsum(1)], 1)  # K x (R + 1)
        below_wr = torch.cat([zero, (weights * r_sorted).cumsum(1)], 1)
        at = torch.searchsorted(r_sorted, s.contiguous()).clamp(max=n_refs)  # refs below s
        w_below, wr_below = below_w[:, at].T, below_wr[:, at].T  # N x K
        w_above, wr_above = below_w[:, -1] - w_below, below_wr[:, -1] - wr_below
        cross = (s.unsqueeze(1) * (w_below - w_above) - wr_below + wr_above) / n_refs
    else:
        cross = s.unsqueeze(1) * d_grade.mean(1) - (d_grade * r).mean(1)
    return mean_sq_score - 2 * cross + mean_sq_grade


def direct_costs(
    scores: torch.Tensor,
    ref_scores: torch.Tensor,
    ref_grades: torch.Tensor,
    candidates: torch.Tensor,
    difference: str = "absolute",
) -> torch.Tensor:
    """:func:`pairwise_costs` summed over every (image, reference) pair: memory N x R, so it
    is given a few images at a time."""
    d_score = scores.unsqueeze(1) - ref_scores.unsqueeze(0)  # N x R
    d_grade = candidates.unsqueeze(1) - ref_grades.unsqueeze(0)  # K x R
    if difference == "absolute":
        d_score, d_grade = d_score.abs(), d_grade.abs()
    # mean_r (a - b)^2 = mean a^2 - 2 mean a b + mean b^2, for all (image, candidate) at once
    r = d_score.shape[1]
    return (
        (d_score**2).mean(1, keepdim=True)
        - 2 * d_score @ d_grade.T / r
        + (d_grade**2).mean(1).unsqueeze(0)
    )


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

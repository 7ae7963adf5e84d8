"""The held-out val AUROC: what a checkpoint chosen on val is worth, free of the noise that
lifts a best-epoch maximum. Pure NumPy, no Lightning."""

import math

import numpy as np
import pytest

from mtcsnn.grading.comparison import ovr_auroc
from mtcsnn.grading.selection import epoch_values, held_out_auroc, val_halves

# the grades of RetinaMNIST's 120 val images
VAL_GRADES = np.repeat(np.arange(5), [54, 12, 28, 20, 6])


def noise(rng, epochs: int, grades: np.ndarray) -> np.ndarray:
    logits = rng.normal(size=(epochs, len(grades), 5))
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_halves_split_every_grade_evenly_and_cover_val_once(seed):
    grades = np.random.default_rng(seed).integers(0, 5, 97)
    first, second = val_halves(grades)
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(len(grades)))
    for grade in range(5):
        assert abs((grades[first] == grade).sum() - (grades[second] == grade).sum()) <= 1


def test_noise_lifts_the_best_epoch_auroc_but_not_the_held_out_one():
    rng = np.random.default_rng(0)
    best, held_out = [], []
    for _ in range(40):
        probs = noise(rng, 50, VAL_GRADES)  # 50 epochs of a model that knows nothing
        best.append(ovr_auroc(np.broadcast_to(VAL_GRADES, (50, 120)), probs).max())
        held_out.append(held_out_auroc(VAL_GRADES, probs))
    assert np.mean(best) > 0.55  # the maximum of 50 noisy evaluations flatters chance
    assert np.mean(held_out) == pytest.approx(0.5, abs=0.015)


def test_a_better_epoch_is_found_from_either_half_and_scored_on_the_other():
    rng = np.random.default_rng(1)
    probs = noise(rng, 20, VAL_GRADES)
    probs[13] = 0.2 * probs[13] + 0.8 * np.eye(5)[VAL_GRADES]  # epoch 13 grades nearly right
    first, second = val_halves(VAL_GRADES)
    expected = np.mean(
        [ovr_auroc(VAL_GRADES[h][None], probs[13, h][None])[0] for h in (second, first)]
    )
    assert held_out_auroc(VAL_GRADES, probs) == pytest.approx(expected)
    assert expected > 0.95


def test_a_grade_with_one_val_image_has_no_held_out_auroc():
    grades = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])  # one grade-4 image: one half lacks grade 4
    probs = noise(np.random.default_rng(2), 3, grades)
    assert math.isnan(held_out_auroc(grades, probs))


def test_probabilities_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="epochs, 4, classes"):
        held_out_auroc(np.arange(4) % 2, np.zeros((4, 2)))


def test_each_monitorable_metric_has_its_epoch_values_as_the_run_logs_them():
    """The held-out figure chooses epochs as the run's checkpoint did: every metric a run may
    monitor has a per-epoch value here equal to the one the torchmetrics collection logs."""
    import torch
    import torch.nn.functional as F

    from mtcsnn.grading import MONITORABLE
    from mtcsnn.grading.metrics import grade_metrics, scalar_metrics

    probs = noise(np.random.default_rng(3), 4, VAL_GRADES)
    for epoch in range(len(probs)):
        logged = scalar_metrics(
            grade_metrics()(torch.from_numpy(probs[epoch]), torch.from_numpy(VAL_GRADES)), ""
        )
        logged["loss"] = float(
            F.nll_loss(torch.from_numpy(probs[epoch]).log(), torch.from_numpy(VAL_GRADES))
        )
        for name in (*MONITORABLE, "recall_0", "recall_4"):
            value = epoch_values(VAL_GRADES, probs, name)[epoch]
            assert value == pytest.approx(logged[name], abs=1e-5), name
    with pytest.raises(ValueError, match="no per-epoch value"):
        epoch_values(VAL_GRADES, probs, "lr")


def test_a_run_that_kept_its_lowest_val_loss_is_scored_at_that_epoch():
    """Epoch 0 ranks the grades a little, with modest confidence; epoch 1 ranks them better but
    is confidently wrong on many images. AUROC chooses epoch 1, the loss epoch 0; each choice is
    scored on the half that did not make it."""
    rng = np.random.default_rng(0)
    onehot = np.eye(5)[VAL_GRADES]
    logits = np.stack(
        [
            0.5 * onehot + rng.normal(size=onehot.shape),
            20 * (1.0 * onehot + rng.normal(size=onehot.shape)),  # the same ranks, sharpened
        ]
    )
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert np.argmax(epoch_values(VAL_GRADES, probs, "auroc")) == 1
    assert np.argmin(epoch_values(VAL_GRADES, probs, "loss")) == 0
    halves = val_halves(VAL_GRADES)
    on = [ovr_auroc(np.broadcast_to(VAL_GRADES[h], (2, len(h))), probs[:, h]) for h in halves]
    assert held_out_auroc(VAL_GRADES, probs, "val/loss") == pytest.approx(
        np.mean([o[0] for o in on])
    )
    assert held_out_auroc(VAL_GRADES, probs) == pytest.approx(np.mean([o[1] for o in on]))

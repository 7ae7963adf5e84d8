"""Ordinal baselines: losses on hand-computed cases, label decoding, and their wiring."""

from __future__ import annotations

import math

import pytest
import torch
from coral_pytorch.layers import CoralLayer

from mtcsnn.losses import CoralLoss, CornLoss, GradeRegressionLoss, MultiTaskLoss
from mtcsnn.losses.probabilities import (
    coral_probabilities,
    corn_probabilities,
    cumulative_to_class,
    score_probabilities,
)
from mtcsnn.models import BranchOutput, MTCSNNModule, SiameseResNet


def out(logits, score=None) -> BranchOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    score = torch.zeros(len(logits)) if score is None else torch.as_tensor(score, dtype=torch.float)
    return BranchOutput(logits, score)


def test_cumulative_probabilities_are_differenced_into_classes():
    p_greater = torch.tensor([[0.9, 0.6, 0.3, 0.1]])
    expected = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1]])
    assert torch.allclose(cumulative_to_class(p_greater), expected)


def test_coral_and_corn_decoding_by_hand():
    logit = math.log(0.9 / 0.1)  # sigmoid = 0.9
    # CORAL: P(y>k) = sigmoid(logit_k) directly
    coral = coral_probabilities(torch.tensor([[logit, 0.0, 0.0, -logit]]))
    assert torch.allclose(coral, torch.tensor([[0.1, 0.4, 0.0, 0.4, 0.1]]), atol=1e-6)
    # CORN: conditionals 0.9, 0.5, 0.5, 0.5 chain to P(y>k) = 0.9, 0.45, 0.225, 0.1125
    corn = corn_probabilities(torch.tensor([[logit, 0.0, 0.0, 0.0]]))
    assert torch.allclose(corn, torch.tensor([[0.1, 0.45, 0.225, 0.1125, 0.1125]]), atol=1e-6)


def test_regression_probabilities_peak_at_the_rounded_clipped_score():
    probs = score_probabilities(torch.tensor([2.4, -1.0, 7.0, 0.6]))
    assert probs.argmax(1).tolist() == [2, 0, 4, 1]
    assert torch.allclose(probs.sum(1), torch.ones(4))


def test_coral_loss_at_zero_logits_is_log2_per_task():
    loss = CoralLoss()
    terms = loss(
        out(torch.zeros(2, 4)), out(torch.zeros(2, 4)), torch.tensor([0, 4]), torch.tensor([2, 3])
    )
    # every one of the 4 binary tasks predicts 0.5: BCE log 2 each, summed over tasks
    assert terms["coral_a"].item() == pytest.approx(4 * math.log(2), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(8 * math.log(2), rel=1e-6)


def test_corn_loss_trains_each_task_on_the_images_that_reach_it():
    loss = CornLoss()
    logits = torch.tensor([[0.0, 5.0, 5.0, 5.0], [0.0, math.log(9), 0.0, 0.0]])
    # grade 0: only task 0 (label 0) -> log 2; its other logits must not count.
    # grade 4: tasks 0-3, all label 1 -> log 2, -log 0.9, log 2, log 2.
    # coral-pytorch averages over the 5 (image, task) terms.
    expected = (4 * math.log(2) - math.log(0.9)) / 5
    terms = loss(out(logits), out(logits), torch.tensor([0, 4]), torch.tensor([0, 4]))
    assert terms["corn_a"].item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_mse_of_the_score():
    loss = GradeRegressionLoss()
    terms = loss(
        out(torch.zeros(2, 5), [0.0, 3.0]),
        out(torch.zeros(2, 5), [1.0, 1.0]),
        torch.tensor([0, 4]),
        torch.tensor([1, 3]),
    )
    assert terms["mse_a"].item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert terms["mse_b"].item() == pytest.approx(2.0)  # (0 + 4) / 2


@pytest.mark.parametrize(
    ("loss", "head", "outputs"),
    [
        (CoralLoss(), CoralLayer, 4),
        (CornLoss(), torch.nn.Linear, 4),
        (MultiTaskLoss(), torch.nn.Linear, 5),
    ],
)
def test_each_loss_gets_its_classifier(loss, head, outputs):
    module = MTCSNNModule(SiameseResNet(), loss, torch.optim.Adam)
    assert isinstance(module.net.classifier, head)
    logits = module.net(torch.rand(3, 3, 28, 28)).logits
    assert logits.shape == (3, outputs)
    assert module.probabilities(module.net(torch.rand(3, 3, 28, 28))).shape == (3, 5)

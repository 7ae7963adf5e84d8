import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mtcsnn.losses import MultiTaskLoss, PairCrossEntropyLoss
from mtcsnn.models import BranchOutput


def branch(logits, score):
    return BranchOutput(
        torch.tensor(logits, dtype=torch.float), torch.tensor(score, dtype=torch.float)
    )


def test_hand_computed_case():
    out_a = branch([[0.0] * 5, [0.0] * 5], [0.0, 1.0])
    out_b = branch([[0.0] * 5, [0.0] * 5], [2.0, 1.0])
    grade_a, grade_b = torch.tensor([0, 2]), torch.tensor([3, 2])
    terms = MultiTaskLoss(lam=0.5)(out_a, out_b, grade_a, grade_b)
    # uniform logits: CE = ln 5 per image; |score diff| = (2, 0), |grade diff| = (3, 0)
    assert terms["ce_a"].item() == pytest.approx(math.log(5))
    assert terms["ce_b"].item() == pytest.approx(math.log(5))
    assert terms["reg"].item() == pytest.approx(0.5)
    assert terms["loss"].item() == pytest.approx(2 * math.log(5) + 0.5 * 0.5)


def test_signed_difference_keeps_the_direction():
    out_a, out_b = branch([[0.0] * 5], [2.0]), branch([[0.0] * 5], [0.0])
    grade_a, grade_b = torch.tensor([0]), torch.tensor([3])
    absolute = MultiTaskLoss(lam=1.0, difference="absolute")(out_a, out_b, grade_a, grade_b)
    signed = MultiTaskLoss(lam=1.0, difference="signed")(out_a, out_b, grade_a, grade_b)
    assert absolute["reg"].item() == pytest.approx((2 - 3) ** 2)
    assert signed["reg"].item() == pytest.approx((2 - (-3)) ** 2)


def test_lambda_zero_equals_the_ce_baseline(tiny_cfg):
    torch.manual_seed(0)
    out_a = BranchOutput(torch.randn(8, 5), torch.randn(8))
    out_b = BranchOutput(torch.randn(8, 5), torch.randn(8))
    grade_a, grade_b = torch.randint(0, 5, (8,)), torch.randint(0, 5, (8,))
    ce = instantiate(tiny_cfg("loss=ce").loss)
    mtcsnn_lam0 = instantiate(tiny_cfg("loss=mtcsnn", "loss.lam=0").loss)
    mtcsnn = instantiate(tiny_cfg("loss=mtcsnn").loss)
    assert isinstance(ce, PairCrossEntropyLoss)
    by_hand = F.cross_entropy(out_a.logits, grade_a) + F.cross_entropy(out_b.logits, grade_b)
    ce_loss = ce(out_a, out_b, grade_a, grade_b)["loss"]
    assert torch.allclose(ce_loss, by_hand)
    assert torch.allclose(mtcsnn_lam0(out_a, out_b, grade_a, grade_b)["loss"], ce_loss)
    assert not torch.allclose(mtcsnn(out_a, out_b, grade_a, grade_b)["loss"], ce_loss)


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match="lam"):
        MultiTaskLoss(lam=-0.1)
    with pytest.raises(ValueError, match="difference"):
        MultiTaskLoss(difference="squared")

import pytest
import torch

from mtcsnn.data.datasets import PairDataset
from mtcsnn.data.pairing import PairSampler, epoch_generator, random_matching


def test_even_count_uses_every_image_exactly_once():
    pairs = random_matching(10, torch.Generator().manual_seed(0))
    assert pairs.shape == (5, 2)
    assert sorted(pairs.flatten().tolist()) == list(range(10))


def test_odd_count_uses_one_image_twice():
    pairs = random_matching(11, torch.Generator().manual_seed(0))
    assert pairs.shape == (6, 2)
    counts = torch.bincount(pairs.flatten(), minlength=11)
    assert counts.min() == 1 and counts.max() == 2 and int((counts == 2).sum()) == 1
    assert bool((pairs[:, 0] != pairs[:, 1]).all()), "an image is never paired with itself"


def test_too_few_images_cannot_pair():
    with pytest.raises(ValueError, match="at least 2"):
        random_matching(1, torch.Generator())


def test_reproducible_from_seed_and_different_between_epochs():
    first = random_matching(100, epoch_generator(seed=7, epoch=3))
    again = random_matching(100, epoch_generator(seed=7, epoch=3))
    next_epoch = random_matching(100, epoch_generator(seed=7, epoch=4))
    other_seed = random_matching(100, epoch_generator(seed=8, epoch=3))
    assert torch.equal(first, again)
    assert not torch.equal(first, next_epoch)
    assert not torch.equal(first, other_seed)


def test_sampler_batches_cover_one_matching_per_epoch():
    sampler = PairSampler(num_images=21, pairs_per_batch=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # 11 pairs -> 4 + 4 + 3
    assert [len(b) for b in batches] == [4, 4, 3]
    epoch0 = torch.cat(batches)
    assert torch.equal(epoch0, sampler.pairs())
    assert set(epoch0.flatten().tolist()) == set(range(21))
    sampler.set_epoch(1)
    assert not torch.equal(torch.cat(list(sampler)), epoch0)
    sampler.set_epoch(0)
    assert torch.equal(torch.cat(list(sampler)), epoch0)


def test_pair_dataset_gives_the_ordinal_difference():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    grades = torch.tensor([0, 4, 2, 1, 3, 0])
    batch = PairDataset(images, grades)[torch.tensor([[0, 1], [2, 3], [4, 5]])]
    assert batch["grade_a"].tolist() == [0, 2, 3]
    assert batch["grade_b"].tolist() == [4, 1, 0]
    assert batch["diff"].tolist() == [-4, 1, 3]
    # images travel with their own grade
    assert batch["image_a"][:, 0, 0, 0].tolist() == [0, 2, 4]
    assert batch["image_b"][:, 0, 0, 0].tolist() == [1, 3, 5]


# --- pairing strategies -------------------------------------------------------------------

from mtcsnn.data.pairing import balanced_pairs, hard_pairs  # noqa: E402


def retina_like_grades(n: int = 1080) -> torch.Tensor:
    # RetinaMNIST's training class shares: 45% grade 0 ... 6% grade 4
    counts = [486, 128, 206, 194, 66]
    grades = torch.cat([torch.full((c,), g) for g, c in enumerate(counts)])
    return grades[torch.randperm(len(grades), generator=torch.Generator().manual_seed(0))][:n]


def diff_shares(grades: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    diffs = (grades[pairs[:, 0]] - grades[pairs[:, 1]]).abs()
    return torch.bincount(diffs, minlength=5).float() / len(diffs)


def test_balanced_pairs_spread_differences_and_use_each_anchor_once():
    grades = retina_like_grades()
    pairs = balanced_pairs(grades, epoch_generator(7, 0))
    assert pairs.shape == (540, 2)
    assert len(set(pairs[:, 0].tolist())) == 540  # a random half of the images as anchors
    assert (pairs[:, 0] != pairs[:, 1]).all()
    balanced = diff_shares(grades, pairs)
    random = diff_shares(grades, random_matching(len(grades), epoch_generator(7, 0)))
    # grade difference 4 is rare under random pairing (grades 0 and 4 must meet), far less so here
    assert balanced[4] > 1.5 * random[4]
    assert balanced.max() - balanced.min() < random.max() - random.min()
    assert torch.equal(pairs, balanced_pairs(grades, epoch_generator(7, 0)))  # reproducible
    assert not torch.equal(pairs, balanced_pairs(grades, epoch_generator(7, 1)))


def test_hard_pairs_have_different_grades_and_the_closest_scores():
    grades = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    scores = torch.tensor([0.0, 0.1, 0.12, 5.0, 5.1, 9.0, 9.05, 20.0])
    pairs = hard_pairs(grades, scores, epoch_generator(1, 0), nearest=1)
    for anchor, partner in pairs.tolist():
        assert grades[anchor] != grades[partner]
        others = [i for i in range(8) if grades[i] != grades[anchor]]
        closest = min(others, key=lambda i: abs(scores[i] - scores[anchor]))
        assert partner == closest


def test_sampler_checks_its_strategy():
    with pytest.raises(ValueError, match="pairing=.closest. is not allowed; choose one of"):
        PairSampler(10, 2, strategy="closest", grades=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="needs the grades"):
        PairSampler(10, 2, strategy="balanced")
    hard = PairSampler(10, 5, strategy="hard", grades=torch.arange(10) % 5)
    assert torch.equal(hard.pairs(), random_matching(10, epoch_generator(0, 0)))  # no scores yet

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

"""Pairing of training images for the Siamese branches: pure functions and a sampler."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends on (seed, epoch) only, so any epoch can be redrawn exactly."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def random_matching(num_images: int, generator: torch.Generator) -> torch.Tensor:
    """A random perfect matching of ``range(num_images)`` as a ``(ceil(n / 2), 2)`` index tensor.

    Every image appears in exactly one pair; with an odd count the left-over image is paired
    with a random other image, which is then used twice.
    """
    if num_images < 2:
        raise ValueError(f"cannot form pairs from {num_images} image(s); need at least 2")
    perm = torch.randperm(num_images, generator=generator)
    if num_images % 2:
        partner = perm[torch.randint(num_images - 1, (1,), generator=generator)]
        perm = torch.cat([perm, partner])
    return perm.view(-1, 2)


class PairSampler(Sampler[torch.Tensor]):
    """Yields one ``(pairs_per_batch, 2)`` index tensor per batch; a fresh matching each epoch.

    Lightning calls :meth:`set_epoch` before every training epoch, so the pairs of epoch ``e``
    depend only on ``(seed, e)``: reproducible, different between epochs, and the same after a
    resume. Under data-parallel training (``world_size`` > 1) every process draws the same
    matching and takes its own slice of each batch, so the global batch stays
    ``pairs_per_batch`` pairs and every process runs the same number of steps.
    """

    def __init__(
        self,
        num_images: int,
        pairs_per_batch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if pairs_per_batch < 1:
            raise ValueError(f"pairs_per_batch must be >= 1, got {pairs_per_batch}")
        if num_images < 2:
            raise ValueError(f"cannot form pairs from {num_images} image(s); need at least 2")
        self.num_images = num_images
        self.pairs_per_batch = pairs_per_batch
        self.seed = seed
        self.epoch = 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pairs(self) -> torch.Tensor:
        """All pairs of the current epoch, in batch order."""
        return random_matching(self.num_images, epoch_generator(self.seed, self.epoch))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.pairs().split(self.pairs_per_batch):
            if self.world_size == 1:
                yield batch
                continue
            part = batch.tensor_split(self.world_size)[self.rank]
            # a last batch with fewer pairs than processes: repeat one pair, never an empty step
            yield part if len(part) else batch[:1]

    def __len__(self) -> int:
        num_pairs = (self.num_images + 1) // 2
        return -(-num_pairs // self.pairs_per_batch)

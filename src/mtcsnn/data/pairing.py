"""Pairing of training images for the Siamese branches: pure functions and a sampler."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from mtcsnn.errors import check_choice


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


PAIRINGS = ("random", "balanced", "hard")


def check_pairing(pairing: object) -> None:
    check_choice("pairing", pairing, PAIRINGS)


def _anchors(num_images: int, generator: torch.Generator) -> torch.Tensor:
    """A random half of the images (as many pairs as a perfect matching has)."""
    return torch.randperm(num_images, generator=generator)[: (num_images + 1) // 2]


def balanced_pairs(
    grades: torch.Tensor, generator: torch.Generator, num_classes: int = 5
) -> torch.Tensor:
    """Pairs whose grade differences are spread as evenly as the data allow.

    Each anchor (a random half of the images) draws a difference uniformly among those its grade
    can have with the grades present, then a partner of such a grade uniformly.
    """
    by_grade = [torch.nonzero(grades == c).flatten() for c in range(num_classes)]
    present = [c for c in range(num_classes) if len(by_grade[c])]
    pairs = []
    for anchor in _anchors(len(grades), generator).tolist():
        grade = int(grades[anchor])
        diffs = sorted({abs(grade - c) for c in present})
        diff = diffs[int(torch.randint(len(diffs), (1,), generator=generator))]
        options = [c for c in present if abs(grade - c) == diff]
        target = options[int(torch.randint(len(options), (1,), generator=generator))]
        pool = by_grade[target]
        if target == grade and len(pool) > 1:
            pool = pool[pool != anchor]
        partner = int(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        pairs.append((anchor, partner))
    return torch.tensor(pairs, dtype=torch.long)


def hard_pairs(
    grades: torch.Tensor, scores: torch.Tensor, generator: torch.Generator, nearest: int = 5
) -> torch.Tensor:
    """Pairs of different grades whose current severity scores are closest.

    Each anchor (a random half of the images) is paired with one of the ``nearest`` images of
    another grade closest to it in score, drawn uniformly (so pairs still vary between epochs).
    """
    anchors = _anchors(len(grades), generator)
    distance = (scores[anchors].unsqueeze(1) - scores.unsqueeze(0)).abs()
    distance[grades[anchors].unsqueeze(1) == grades.unsqueeze(0)] = float("inf")
    k = min(nearest, len(grades))
    closest = distance.topk(k, dim=1, largest=False)
    pick = torch.randint(k, (len(anchors),), generator=generator)
    chosen = closest.indices[torch.arange(len(anchors)), pick]
    finite = closest.values[torch.arange(len(anchors)), pick].isfinite()
    # an anchor with no image of another grade keeps a random partner
    fallback = torch.randint(len(grades), (len(anchors),), generator=generator)
    return torch.stack([anchors, torch.where(finite, chosen, fallback)], dim=1)


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
        strategy: str = "random",
        grades: torch.Tensor | None = None,
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
        check_pairing(strategy)
        if strategy != "random" and grades is None:
            raise ValueError(f"pairing={strategy} needs the grades")
        self.strategy, self.grades = strategy, grades
        # severity score of every training image, kept up to date by PairingFeedback (hard
        # pairing); until the first epoch has given scores, hard pairing draws random matchings
        self.scores: torch.Tensor | None = None
        self.last_pairs: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pairs(self) -> torch.Tensor:
        """All pairs of the current epoch, in batch order."""
        generator = epoch_generator(self.seed, self.epoch)
        if self.strategy == "balanced":
            pairs = balanced_pairs(self.grades, generator)
        elif self.strategy == "hard" and self.scores is not None:
            pairs = hard_pairs(self.grades, self.scores.detach().float().cpu(), generator)
        else:
            pairs = random_matching(self.num_images, generator)
        self.last_pairs = pairs
        return pairs

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

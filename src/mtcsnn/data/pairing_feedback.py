"""What the pair sampler learns from training: the scores hard pairing needs, the pairs' mix.

Hard pairing pairs images whose current severity scores are close; those scores come from the
model's training steps. This callback carries them from the steps' outputs to the sampler at
each epoch end, so neither the model nor the sampler knows the other. It also logs the shares
of grade differences among the epoch's pairs (``train/pair_diff_0`` ...).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from mtcsnn.data.pairing import PairSampler


def _gather(items: list) -> list:
    """Every process's items (data-parallel training); the items themselves otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    return [item for part in parts for item in part]


class PairingFeedback(pl.Callback):
    """Reads ``score_a``/``score_b`` from each training step's output (hard pairing only)."""

    def __init__(self, num_classes: int = 5) -> None:
        self.num_classes = num_classes
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def sampler_of(trainer: pl.Trainer) -> PairSampler | None:
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        return sampler if isinstance(sampler, PairSampler) else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        sampler = self.sampler_of(trainer)
        if sampler is None or sampler.strategy != "hard" or not isinstance(outputs, dict):
            return
        self._seen.append((batch["index_a"], outputs["score_a"]))
        self._seen.append((batch["index_b"], outputs["score_b"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self.sampler_of(trainer)
        if sampler is None:
            return
        if sampler.last_pairs is not None and sampler.grades is not None:
            grades, pairs = sampler.grades, sampler.last_pairs
            diffs = (grades[pairs[:, 0]] - grades[pairs[:, 1]]).abs()
            shares = torch.bincount(diffs, minlength=self.num_classes).float()
            shares /= shares.sum()
            pl_module.log_dict({f"train/pair_diff_{d}": float(v) for d, v in enumerate(shares)})
        if sampler.strategy == "hard" and self._seen:
            seen = _gather([(i.cpu(), s.float().cpu()) for i, s in self._seen])
            scores = sampler.scores
            if scores is None:
                scores = torch.zeros(sampler.num_images)
            for index, score in seen:
                scores[index] = score
            sampler.scores = scores
        self._seen = []

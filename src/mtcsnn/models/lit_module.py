"""The LightningModule: Siamese training on pairs, single-image evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mtcsnn.errors import DivergenceError
from mtcsnn.grading.metrics import grade_metrics, scalar_metrics, warn_absent_grades
from mtcsnn.losses.base import BranchOutput, PairLoss, check_num_classes
from mtcsnn.models.siamese_resnet import SiameseResNet
from mtcsnn.models.spec import ModelSpec


def divergence_message(
    terms: dict[str, torch.Tensor], epoch: int, step: int, batch_idx: int, best: str
) -> str:
    """Which term diverged, the setting to lower for it, and whether a checkpoint exists
    (``epoch`` counted from 1, as the console counts it)."""
    values = {name: float(value.detach()) for name, value in terms.items() if name != "loss"}
    broken = [name for name, value in values.items() if not math.isfinite(value)]
    culprit = broken[0] if broken else max(values, key=lambda n: abs(values[n]), default="loss")
    knob = (
        "try a lower loss.lam (the score-difference term diverged)"
        if culprit == "reg"
        else "try a lower model.optimizer.lr"
    )
    kept = f"the best checkpoint so far is kept: {best}" if best else "no checkpoint was written"
    return (
        f"training diverged: loss is {float(terms['loss'].detach())} at epoch {epoch}, step {step} "
        f"(batch {batch_idx}; term {culprit} = {values.get(culprit, float('nan'))}); {kept}; "
        f"{knob}"
    )


class NonFiniteOutputError(DivergenceError):
    """The model gave NaN or infinite outputs on images it was to grade: none is graded."""


class DivergenceWatch:
    """The first non-finite training loss, recorded on the device without waiting for it.

    Reading a GPU tensor's value (``if not torch.isfinite(loss)``) stalls the host until the
    device has caught up, every step. Instead each step folds its loss terms into tensors on
    the device, and the host reads them every ``CHECK_EVERY`` steps and at each epoch's last
    batch, before validation or a checkpoint can see the diverged weights.
    """

    CHECK_EVERY = 50

    def __init__(self) -> None:
        self.names: list[str] = []
        self.step: torch.Tensor | None = None  # step of the first bad loss, or -1
        self.batch: torch.Tensor | None = None  # its batch index
        self.values: torch.Tensor | None = None  # its terms, in the order of ``names``

    def record(self, terms: dict[str, torch.Tensor], step: int, batch_idx: int) -> None:
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        if self.step is None or list(terms) != self.names:
            self.names = list(terms)
            self.step = torch.full((), -1, dtype=torch.long, device=values.device)
            self.batch = torch.full((), -1, dtype=torch.long, device=values.device)
            self.values = torch.zeros_like(values)
        take = ~torch.isfinite(values[self.names.index("loss")]) & (self.step < 0)
        # Python numbers go in as kernel arguments: no host-to-device copy, so no wait
        self.step = torch.where(take, step, self.step)
        self.batch = torch.where(take, batch_idx, self.batch)
        self.values = torch.where(take, values, self.values)

    def diverged(self) -> tuple[dict[str, torch.Tensor], int, int] | None:
        """The bad step's terms, step and batch, if any (this reads the device: a sync)."""
        if self.step is None or self.batch is None or self.values is None:
            return None
        step = int(self.step)
        if step < 0:
            return None
        terms = dict(zip(self.names, self.values.cpu(), strict=True))
        return terms, step, int(self.batch)


class MTCSNNModule(pl.LightningModule):
    """Trains ``net`` on image pairs with ``loss``; evaluates every val/test image on its own.

    Logs each loss term (``train/ce_a``, ``train/ce_b``, ``train/reg``, ``train/loss``) and the
    val/test grade metrics. A training step returns its loss and both branches' severity scores
    (``score_a``, ``score_b``), which callbacks such as hard pairing's feedback read; a val
    step returns each image's index, grade, class probabilities and severity score. After a
    test epoch, ``test_predictions`` and ``test_confusion`` hold what the run writes to disk;
    after a val epoch, ``val_predictions`` holds its images' grades, probabilities and scores.
    """

    def __init__(
        self,
        net: SiameseResNet,
        loss: PairLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        num_classes: int = 5,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        # Only plain values go into hparams, so checkpoints load with weights_only=True.
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.net = net
        self.loss = loss
        # a loss may need its own classifier (e.g. CORAL: K-1 ordered logits)
        classifier = loss.make_classifier(self.net.num_features)
        if classifier is not None:
            self.net.classifier = classifier
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # The resolved run config (plain dict), saved in every checkpoint so that a checkpoint
        # can be rebuilt and used with its own settings.
        self.run_config: dict | None = None
        # What the model is (mtcsnn.models.spec.ModelSpec): saved beside the run config, and
        # the only thing a checkpoint's model is rebuilt from.
        self.spec: ModelSpec | None = None
        self.val_metrics = grade_metrics(num_classes)
        self.test_metrics = grade_metrics(num_classes)
        self._test_outputs: list[dict[str, torch.Tensor]] = []
        self.test_predictions: dict[str, torch.Tensor] = {}
        # the last val pass's images (index, grade, probs): val chooses referral thresholds
        self._val_outputs: list[dict[str, torch.Tensor]] = []
        self.val_predictions: dict[str, torch.Tensor] = {}
        self.test_confusion: list[list[int]] = []
        self.compile_net = compile
        self.divergence = DivergenceWatch()

    def configure_model(self) -> None:
        # In place (nn.Module.compile): parameter names, hence checkpoints, stay as they are.
        if self.compile_net and not getattr(self.net, "_compiled_call_impl", None):
            self.net.compile()

    def forward(self, images: torch.Tensor):
        return self.net(images)

    def probabilities(self, out: BranchOutput) -> torch.Tensor:
        """The 5 class probabilities of a network output, as the loss defines them."""
        return self.loss.probabilities(out)

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class scores of images to explain (Grad-CAM), as the loss defines them."""
        return self.loss.class_scores(self.net(images))

    def training_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        out_a, out_b = self.net.forward_pair(batch["image_a"], batch["image_b"])
        terms = self.loss(out_a, out_b, batch["grade_a"], batch["grade_b"])
        self.divergence.record(terms, self.global_step, batch_idx)
        for name, value in terms.items():
            self.log(
                f"train/{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=len(batch["grade_a"]),
                sync_dist=True,  # reduced once per epoch; a no-op in one process
                prog_bar=name == "loss",  # the bar shows the last epoch's loss: no step syncs
            )
        return {
            "loss": terms["loss"],
            "score_a": out_a.score.detach(),
            "score_b": out_b.score.detach(),
        }

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = DivergenceWatch.CHECK_EVERY
        if (self.global_step % every == 0) or self.trainer.is_last_batch:
            found = self.divergence.diverged()
            if found is not None:
                # stop here: the best checkpoint so far stays on disk, nothing else is written
                terms, step, bad_batch = found
                checkpoint = self.trainer.checkpoint_callback
                best = checkpoint.best_model_path if checkpoint is not None else ""
                raise DivergenceError(
                    divergence_message(terms, self.current_epoch + 1, step, bad_batch, best)
                )

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str):
        out = self.net(batch["image"])
        probs = self.probabilities(out)
        self._count_non_finite(stage, probs, out.score)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(probs, batch["grade"])
        # negative log-likelihood of the true grade: the same measure for every head
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), batch["grade"])
        self.log(
            f"{stage}/loss", loss, on_epoch=True, batch_size=len(batch["grade"]), sync_dist=True
        )
        return out, probs

    def _count_non_finite(self, stage: str, probs: torch.Tensor, score: torch.Tensor) -> None:
        """Count (on the device, no sync) the images whose outputs are NaN or infinite."""
        finite = torch.isfinite(probs).all(-1)
        finite &= torch.isfinite(score.reshape(len(probs), -1)).all(-1)
        # {stage: (images not finite, images)}, made on first use
        counts = self.__dict__.setdefault("_non_finite", {})
        seen = counts.get(stage, (0, 0))
        counts[stage] = (seen[0] + (~finite).sum(), seen[1] + len(probs))

    def _refuse_non_finite(self, stage: str) -> None:
        """Non-finite outputs are never graded: an error instead of metrics made from them
        (torchmetrics scores NaN probabilities without a word). One sync per epoch."""
        bad, total = self.__dict__.get("_non_finite", {}).pop(stage, (0, 0))
        bad = torch.as_tensor(bad, device=self.device)
        total = torch.as_tensor(total, device=self.device)
        fitting = False
        if self._trainer is not None:  # every process's share, so all raise together
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            fitting = self.trainer.state.fn == "fit"
        if int(bad) > 0:
            self.val_metrics.reset()
            self.test_metrics.reset()
            hint = (
                f"at epoch {self.current_epoch + 1}; the best checkpoint so far is kept; try a "
                "lower model.optimizer.lr"
                if fitting
                else "(are the checkpoint's weights diverged or damaged?)"
            )
            raise NonFiniteOutputError(
                f"the model gave non-finite outputs (NaN or infinite) for {int(bad)} of "
                f"{int(total)} {stage} images; they are not graded and no metrics are written "
                f"from them {hint}"
            )

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        output, probs = self._evaluate(batch, "val")
        # what callbacks such as the val prediction log read
        out = {
            "index": batch["index"],
            "grade": batch["grade"],
            "probs": probs.detach(),
            "score": output.score.detach().float(),
        }
        self._val_outputs.append({key: value.cpu() for key, value in out.items()})
        return out

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []
        self.__dict__.get("_non_finite", {}).pop("val", None)

    def on_validation_epoch_end(self) -> None:
        self._refuse_non_finite("val")
        values = self.val_metrics.compute()
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            # the sanity check sees only a few batches: grades missing there may be in val
            warn_absent_grades(self.val_metrics, "val")
        for name, value in scalar_metrics(values, "val/").items():
            self.log(name, value, prog_bar=name == "val/auroc")
        self.val_metrics.reset()
        if not self.trainer.sanity_checking:
            self.val_predictions = gathered(self._val_outputs)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []
        self.__dict__.get("_non_finite", {}).pop("test", None)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out, probs = self._evaluate(batch, "test")
        self._test_outputs.append(
            {
                "index": batch["index"].cpu(),
                "grade": batch["grade"].cpu(),
                "probs": probs.float().cpu(),
                "score": out.score.float().cpu(),
            }
        )

    def on_test_epoch_end(self) -> None:
        self._refuse_non_finite("test")
        values = self.test_metrics.compute()
        if self.trainer.is_global_zero:
            warn_absent_grades(self.test_metrics, "test")
        self.log_dict(scalar_metrics(values, "test/"))
        self.test_confusion = values["confusion"].int().tolist()
        self.test_metrics.reset()
        self.test_predictions = gathered(self._test_outputs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mtcsnn_config"] = self.run_config  # the run's record: read, never built
        if self.spec is not None:
            checkpoint["mtcsnn_spec"] = self.spec.to_dict()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def gathered(outputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One pass's per-batch outputs as one table; under DDP, every process's share of it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shares: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shares, outputs)
        outputs = [o for share in shares for o in share]
    if not outputs:
        return {}
    return {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}

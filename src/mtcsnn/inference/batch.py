"""Grading new images with a trained model: batches of uint8 images to probabilities and scores.

Inputs that cannot be read are returned with the reason; the others are still predicted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from mtcsnn.errors import ConfigError
from mtcsnn.inference.images import ImageSource, expand_inputs, read_all
from mtcsnn.models import MTCSNNModule
from mtcsnn.writing import csv_text as safe_csv_text

# referable: P(grade >= the referral cut); refer: 1 at or above the threshold val chose, else 0
# (empty where the model records no threshold)
PREDICTION_HEADER = [
    "path",
    "pred",
    *[f"prob_{c}" for c in range(5)],
    "score",
    "referable",
    "refer",
]
FAILURE_HEADER = ["input", "reason"]
DEVICES = ("auto", "cpu", "cuda")
# what every output of a trained model carries (predictions, exported models); MODEL_CARD.md
INTENDED_USE = (
    "Research use only: not a medical device; not for diagnosing, screening or treating anyone. "
    "Trained on RetinaMNIST (fundus photographs from DeepDRiD, downsampled to 28x28 unless the "
    "model says otherwise); grades of photographs from other cameras, sizes or populations are "
    "untested. See MODEL_CARD.md."
)


def pick_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES and not str(name).startswith("cuda:"):
        raise ConfigError("device", name, "choose one of: " + ", ".join(DEVICES))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", name, "no CUDA GPU is available here; use device=cpu or auto")
    return torch.device(name)


class Grader(nn.Module):
    """uint8 images N x 3 x S x S -> (class probabilities N x 5, severity score N).

    Several modules (an ensemble): their probabilities and scores averaged. ``temperature``:
    the probabilities at that temperature (temperature scaling, as
    :func:`mtcsnn.grading.calibration.scaled` computes it; None: as the model gives them). What
    ``predict`` runs, and what ``export`` writes out.
    """

    def __init__(
        self, modules: MTCSNNModule | Sequence[MTCSNNModule], temperature: float | None = None
    ) -> None:
        super().__init__()
        members = [modules] if isinstance(modules, MTCSNNModule) else list(modules)
        self.nets = nn.ModuleList(module.net for module in members)
        self.losses = nn.ModuleList(module.loss for module in members)
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = images.float() / 255
        probs, scores = [], []
        for net, loss in zip(self.nets, self.losses, strict=True):
            out = net(batch)
            probs.append(loss.probabilities(out).float())
            scores.append(out.score.float())
        if len(probs) == 1:  # one model: its own outputs, no averaging in an exported graph
            prob, score = probs[0], scores[0]
        else:
            prob, score = torch.stack(probs).mean(0), torch.stack(scores).mean(0)
        if self.temperature is not None:
            # scaled(), in the graph: float64 as there, so predict and an export agree
            logp = torch.log(prob.double().clamp_min(torch.finfo(torch.float64).tiny))
            prob = torch.softmax(logp / self.temperature, dim=1).float()
        return prob, score


@torch.no_grad()
def predict_batch(
    modules: MTCSNNModule | Sequence[MTCSNNModule],
    images: list[torch.Tensor],
    device: torch.device,
    temperature: float | None = None,
):
    """Class probabilities (N x 5) and severity scores (N) of uint8 images, on the CPU.

    Several modules (an ensemble): their probabilities and scores averaged; ``temperature``:
    see :class:`Grader`.
    """
    probs, scores = Grader(modules, temperature)(torch.stack(images).to(device))
    return probs.cpu(), scores.cpu()


def non_finite_reason(values: torch.Tensor, outcome: str = "not graded") -> str | None:
    """Why an image's outputs (its probabilities and score) cannot be used: NaN or infinite
    values, which would otherwise become grade 0 (``argmax`` of NaN); None when all are finite."""
    kinds = {
        "nan" if math.isnan(v) else "inf" for v in values.flatten().tolist() if not math.isfinite(v)
    }
    if not kinds:
        return None
    return f"the model gave non-finite outputs ({', '.join(sorted(kinds))}); {outcome}"


def predict_inputs(
    modules: MTCSNNModule | Sequence[MTCSNNModule],
    inputs: Iterable[str],
    image_size: int,
    device: torch.device,
    batch_size: int = 64,
    progress: bool = True,
    referral: tuple[int, float | None] = (2, None),
    temperature: float | None = None,
) -> tuple[list[list], list[tuple[str, str]]]:
    """Predict every readable image of ``inputs`` (files, folders, ``.npz`` files).

    Returns the CSV rows (:data:`PREDICTION_HEADER`) and ``(input, reason)`` failures: inputs
    that cannot be read, and images whose probabilities or score are NaN or infinite (never
    graded). Several modules: an ensemble, whose probabilities and scores are averaged.
    ``referral``: the cut whose probability is the ``referable`` column and the threshold of
    the ``refer`` flag (None: the flag is left empty). ``temperature``: the probabilities are
    written at it (temperature scaling; None: as the model gives them).
    """
    cut, threshold = referral
    members = [modules] if isinstance(modules, MTCSNNModule) else list(modules)
    members = [module.to(device).eval() for module in members]
    sources, failures = expand_inputs([str(i) for i in inputs])
    rows: list[list] = []
    pending: list[tuple[ImageSource, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        probs, scores = predict_batch(members, [image for _, image in pending], device, temperature)
        for (source, _), p, s in zip(pending, probs, scores, strict=True):
            reason = non_finite_reason(torch.cat([p.flatten(), s.flatten()]))
            if reason:
                failures.append((source.name, reason))
                continue
            referable = float(p[cut:].sum())
            refer = "" if threshold is None else int(referable >= threshold)
            rows.append(
                [
                    source.name,
                    int(p.argmax()),
                    *[f"{v:.7g}" for v in p.tolist()],
                    f"{s:.6f}",
                    f"{referable:.7g}",
                    refer,
                ]
            )
        pending.clear()

    for source, image, reason in read_all(sources, image_size, progress=progress):
        if image is None:
            failures.append((source.name, reason or "unreadable"))
            continue
        pending.append((source, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    return rows, failures


def csv_text(header: list[str], rows: Iterable) -> str:
    """CSV text; each text cell that a spreadsheet would run as a formula (an input named
    ``=HYPERLINK(...)``, ``-2+3``, ``@SUM(...)``) starts with ``'`` (OWASP's advice), numbers
    stay numbers, and commas, quotes and line breaks are quoted (see
    :func:`mtcsnn.writing.csv_text`)."""
    return safe_csv_text(header, rows)

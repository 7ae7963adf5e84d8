"""What a checkpoint says about its model: a small, versioned, typed description.

A checkpoint is a file from someone else. Its model is rebuilt from this spec alone, by plain
Python (:func:`mtcsnn.models.build.build_from_spec`): the backbone and stem by name, the loss
head from a fixed table, each constant checked and bounded. Nothing in it names a class to
import, a path to read or an expression to evaluate, so a spec can only ask for a model this
project could have trained.

Its plain-dict form (what a checkpoint stores under ``mtcsnn_spec``)::

    {"format": "mtcsnn-model-spec", "version": 1,
     "backbone": "resnet18", "stem": "imagenet", "grades": 5,
     "head": {"kind": "mtcsnn", "lam": 0.5, "difference": "signed", "label_smoothing": None},
     "dropout": 0.3, "image_size": 28,
     "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
     "preparation": {"name": "medmnist", "version": 1},
     "trained_on": {"data": "retinamnist", "labels": None}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtcsnn.errors import MTCSNNError
from mtcsnn.losses import (
    DIFFERENCES,
    CoralLoss,
    CornLoss,
    GradeRegressionLoss,
    MultiTaskLoss,
    PairCrossEntropyLoss,
    PairLoss,
)
from mtcsnn.losses.base import NUM_GRADES
from mtcsnn.models.siamese_resnet import BACKBONES, STEMS

SPEC_FORMAT = "mtcsnn-model-spec"
SPEC_VERSION = 1
# the input sides this project trains and predicts at (MedMNIST+ publishes 28-224; a folder of
# photographs may be prepared at any side in this range)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512
# how the training images were prepared, and the versions of each this code can reproduce:
# MedMNIST's own images, photographs prepared by mtcsnn.data.fundus.prepare_image (disc found,
# padded square, resized), or the synthetic toy set
PREPARATIONS: dict[str, tuple[int, ...]] = {
    "medmnist": (1,),
    "fundus_disc_square": (1,),
    "synthetic": (1,),
}
# the data a model was trained on, and the preparation each implies
TRAINED_ON: dict[str, str] = {
    "retinamnist": "medmnist",
    "fundus_folder": "fundus_disc_square",
    "synthetic": "synthetic",
}
MAX_LABELS_NAME = 255  # the recorded labels file name is only ever shown, never opened
# bounds of the head constants a file may set (wider than any setting the project uses)
MAX_LAM = 1e6
MAX_WIDTH = 100.0
MAX_STD, MIN_STD = 10.0, 1e-3


class SpecError(MTCSNNError):
    """A model spec that this code does not build: unknown, ill-typed or out of bounds.

    ``key``, ``value`` and ``wanted`` name the one value at fault, where there is one.
    """

    def __init__(self, message: str, key: str = "", value: object = None, wanted: str = "") -> None:
        super().__init__(message)
        self.key, self.value, self.wanted = key, value, wanted


@dataclass(frozen=True)
class Head:
    """The loss head: which loss, and its constants (each head has its own, all required)."""

    kind: str
    constants: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        return dict(self.constants)[name]


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    stem: str
    grades: int
    head: Head
    dropout: float | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preparation: str
    preparation_version: int
    trained_on: str
    labels_name: str | None = None  # the labels CSV's file name, for messages only
    # how a folder without a split column was split: (val_fraction, test_fraction, seed); eval
    # splits the same way, so its test images are never ones the model trained on
    split: tuple[float, float, int] | None = None
    # the cross-validation folds it trained on: (folds, fold or "all" for a refit, fold seed);
    # eval validates on the same fold, so never on images the model trained on
    folds: tuple[int, int | str, int] | None = None
    version: int = SPEC_VERSION

    def to_dict(self) -> dict:
        """The plain-dict form stored in a checkpoint (parse it back with :func:`parse_spec`)."""
        return {
            "format": SPEC_FORMAT,
            "version": self.version,
            "backbone": self.backbone,
            "stem": self.stem,
            "grades": self.grades,
            "head": {"kind": self.head.kind, **dict(self.head.constants)},
            "dropout": self.dropout,
            "image_size": self.image_size,
            "normalisation": {"mean": list(self.mean), "std": list(self.std)},
            "preparation": {"name": self.preparation, "version": self.preparation_version},
            "trained_on": {
                "data": self.trained_on,
                "labels": self.labels_name,
                "split": None
                if self.split is None
                else dict(zip(SPLIT_KEYS, self.split, strict=True)),
                "folds": None
                if self.folds is None
                else dict(zip(FOLDS_KEYS, self.folds, strict=True)),
            },
        }


# Readers of one value each: they return it checked, or raise SpecError naming the key.
def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(key: str, value: object, wanted: str) -> SpecError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SpecError(f"model spec: {key}={shown} is not allowed; {wanted}", key, value, wanted)


def _choice(key: str, value: object, allowed: tuple | Mapping) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _fail(key, value, "choose one of: " + ", ".join(allowed))
    return value


def _whole(key: str, value: object, low: int, high: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise _fail(key, value, f"it must be a whole number from {low} to {high}")
    return int(value)


def _real(key: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    ok = _number(value) and math.isfinite(value) and value <= high  # type: ignore[operator]
    ok = ok and (value > low if low_open else value >= low)  # type: ignore[operator]
    if not ok:
        side = "(" if low_open else "["
        raise _fail(key, value, f"it must be a finite number in {side}{low}, {high}]")
    return float(value)  # type: ignore[arg-type]


def _share(key: str, value: object) -> float | None:
    """null or a share from 0 to 1, 1 excluded (dropout, label smoothing)."""
    if value is None:
        return None
    if not (_number(value) and math.isfinite(value) and 0 <= value < 1):  # type: ignore[operator]
        raise _fail(key, value, "it must be null or a number from 0 to 1 (1 excluded)")
    return float(value)  # type: ignore[arg-type]


def _triple(key: str, value: object, low: float, high: float, low_open: bool) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise _fail(key, value, "it must be a list of 3 numbers (R, G, B)")
    return tuple(_real(f"{key}[{i}]", v, low, high, low_open) for i, v in enumerate(value))


def _mapping(key: str, value: object, keys: set[str]) -> Mapping:
    """A dict with exactly ``keys`` (string keys): unknown and missing keys are named."""
    if not isinstance(value, Mapping):
        raise _fail(key, value, f"it must be a mapping with the keys {sorted(keys)}")
    unknown = sorted(
        repr(k)[:40] if not isinstance(k, str) else k[:40] for k in value if k not in keys
    )
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""  # one short line
        raise SpecError(
            f"model spec: unknown key(s) {', '.join(f'{key}.{k!r}' for k in unknown[:3])}{more}; "
            f"this version knows {', '.join(sorted(keys))}"
        )
    missing = sorted(keys - set(value))
    if missing:
        raise SpecError(f"model spec: missing {', '.join(f'{key}.{k}' for k in missing)}")
    return value


SPLIT_KEYS = ("val_fraction", "test_fraction", "seed")
MAX_SEED = 2**32 - 1


def _split(value: object) -> tuple[float, float, int] | None:
    """null, or the fractions and seed of a drawn split (each fraction in (0, 1), sum < 1)."""
    if value is None:
        return None
    fields = _mapping("trained_on.split", value, set(SPLIT_KEYS))
    val = _real("trained_on.split.val_fraction", fields["val_fraction"], 0.0, 1.0, low_open=True)
    test = _real("trained_on.split.test_fraction", fields["test_fraction"], 0.0, 1.0, True)
    if val + test >= 1:
        raise _fail("trained_on.split", value, "val_fraction + test_fraction must be below 1")
    return val, test, _whole("trained_on.split.seed", fields["seed"], 0, MAX_SEED)


FOLDS_KEYS = ("folds", "fold", "seed")
MAX_FOLDS = 1000
EVERY_FOLD = "all"  # a refit's fold: it trained on all of them


def _folds(value: object) -> tuple[int, int | str, int] | None:
    """null, or the number of folds, the fold that was val (or ``all``) and the fold seed."""
    if value is None:
        return None
    fields = _mapping("trained_on.folds", value, set(FOLDS_KEYS))
    folds = _whole("trained_on.folds.folds", fields["folds"], 2, MAX_FOLDS)
    fold = fields["fold"]
    if fold != EVERY_FOLD:
        fold = _whole("trained_on.folds.fold", fold, 0, folds - 1)
    return folds, fold, _whole("trained_on.folds.seed", fields["seed"], 0, MAX_SEED)


def _labels_name(value: object) -> str | None:
    if value is None:
        return None
    # shown in messages and metrics.json as it is: nothing a reader would expand ("${...}")
    printable = isinstance(value, str) and value.isprintable() and "${" not in value
    if not (printable and 0 < len(value) <= MAX_LABELS_NAME):  # type: ignore[arg-type]
        raise _fail(
            "trained_on.labels",
            value,
            f"it must be null or a printable name of at most {MAX_LABELS_NAME} characters "
            'without "${"',
        )
    return value  # type: ignore[return-value]


# Each head: its loss class and a reader per constant (the constants are its arguments).
HEAD_CONSTANTS: dict[str, dict[str, Callable[[str, object], Any]]] = {
    "ce": {"label_smoothing": _share},
    "mtcsnn": {
        "lam": lambda k, v: _real(k, v, 0.0, MAX_LAM),
        "difference": lambda k, v: _choice(k, v, DIFFERENCES),
        "label_smoothing": _share,
    },
    "coral": {},
    "corn": {},
    "regression": {"width": lambda k, v: _real(k, v, 0.0, MAX_WIDTH, low_open=True)},
}
LOSSES: dict[str, Callable[..., PairLoss]] = {
    "ce": PairCrossEntropyLoss,
    "mtcsnn": MultiTaskLoss,
    "coral": lambda grades: CoralLoss(num_classes=grades),
    "corn": lambda grades: CornLoss(num_classes=grades),
    "regression": lambda grades, width: GradeRegressionLoss(num_classes=grades, width=width),
}
# the heads whose loss takes the number of grades
TAKES_GRADES = frozenset({"coral", "corn", "regression"})

TOP_KEYS = {
    "format",
    "version",
    "backbone",
    "stem",
    "grades",
    "head",
    "dropout",
    "image_size",
    "normalisation",
    "preparation",
    "trained_on",
}


def parse_head(value: object) -> Head:
    if not isinstance(value, Mapping) or "kind" not in value:
        raise _fail("head", value, "it must be a mapping with a kind: " + ", ".join(LOSSES))
    kind = _choice("head.kind", value["kind"], HEAD_CONSTANTS)
    readers = HEAD_CONSTANTS[kind]
    fields = _mapping("head", value, {"kind", *readers})
    return Head(
        kind, tuple((name, read(f"head.{name}", fields[name])) for name, read in readers.items())
    )


def parse_spec(raw: object) -> ModelSpec:
    """A :class:`ModelSpec` from its plain-dict form, or one SpecError naming what is wrong.

    Strict: every key must be known and present, every value of its type and within its
    bounds, every name one of the choices this code builds, and the version one it knows.
    """
    if not isinstance(raw, Mapping):
        raise SpecError(f"model spec: it must be a mapping, not {type(raw).__name__}")
    if raw.get("format") != SPEC_FORMAT:
        raise _fail("format", raw.get("format"), f"it must be {SPEC_FORMAT!r}")
    version = raw.get("version")
    if isinstance(version, bool) or version != SPEC_VERSION or not isinstance(version, int):
        raise _fail("version", version, f"this mtcsnn reads version {SPEC_VERSION} (a newer file?)")
    fields = _mapping("spec", raw, TOP_KEYS)
    norm = _mapping("normalisation", fields["normalisation"], {"mean", "std"})
    prep = _mapping("preparation", fields["preparation"], {"name", "version"})
    origin_raw = fields["trained_on"]
    # ``split`` and ``folds`` may be left out (null): no drawn split, no cross-validation
    origin_keys = {"data", "labels"} | (
        {key for key in ("split", "folds") if key in origin_raw}
        if isinstance(origin_raw, Mapping)
        else set()
    )
    origin = _mapping("trained_on", origin_raw, origin_keys)
    preparation = _choice("preparation.name", prep["name"], PREPARATIONS)
    known = PREPARATIONS[preparation]
    prep_version = _whole("preparation.version", prep["version"], min(known), max(known))
    trained_on = _choice("trained_on.data", origin["data"], TRAINED_ON)
    if TRAINED_ON[trained_on] != preparation:
        raise _fail(
            "preparation.name",
            preparation,
            f"a model trained on {trained_on} was prepared as {TRAINED_ON[trained_on]}",
        )
    grades = fields["grades"]
    if isinstance(grades, bool) or grades != NUM_GRADES or not isinstance(grades, int):
        raise _fail("grades", grades, f"mtcsnn grades on the {NUM_GRADES}-grade DR scale (0-4)")
    return ModelSpec(
        backbone=_choice("backbone", fields["backbone"], tuple(BACKBONES)),
        stem=_choice("stem", fields["stem"], STEMS),
        grades=NUM_GRADES,
        head=parse_head(fields["head"]),
        dropout=_share("dropout", fields["dropout"]),
        image_size=_whole("image_size", fields["image_size"], MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        mean=_triple("normalisation.mean", norm["mean"], 0.0, 1.0, low_open=False),
        std=_triple("normalisation.std", norm["std"], MIN_STD, MAX_STD, low_open=False),
        preparation=preparation,
        preparation_version=prep_version,
        trained_on=trained_on,
        labels_name=_labels_name(origin["labels"]),
        split=_split(origin.get("split")),
        folds=_folds(origin.get("folds")),
    )

"""The model spec of a train config (:mod:`mtcsnn.models.spec`), read value by value.

Training writes it into every checkpoint; an old checkpoint's saved config, once
:func:`mtcsnn.run.checkpoint.check_buildable` passed it, is converted with it. Nothing is
instantiated: the config's classes are looked up in fixed tables and unknown settings refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hydra.utils import get_class

from mtcsnn.data.fundus_folder import PREPARATION_VERSION
from mtcsnn.errors import ConfigError
from mtcsnn.models.spec import (
    SPEC_FORMAT,
    SPEC_VERSION,
    TRAINED_ON,
    ModelSpec,
    SpecError,
    parse_spec,
)

# A train config's classes as the spec names them
HEAD_OF_LOSS = {
    "mtcsnn.losses.PairCrossEntropyLoss": "ce",
    "mtcsnn.losses.MultiTaskLoss": "mtcsnn",
    "mtcsnn.losses.CoralLoss": "coral",
    "mtcsnn.losses.CornLoss": "corn",
    "mtcsnn.losses.GradeRegressionLoss": "regression",
}
# each head's constants and their defaults (the loss classes' own)
HEAD_DEFAULTS: dict[str, dict[str, object]] = {
    "ce": {"label_smoothing": None},
    "mtcsnn": {"lam": 0.5, "difference": "absolute", "label_smoothing": None},
    "coral": {},
    "corn": {},
    "regression": {"width": 0.5},
}
DATA_KIND = {
    "mtcsnn.data.RetinaMNISTDataModule": "retinamnist",
    "mtcsnn.data.FundusFolderDataModule": "fundus_folder",
    "mtcsnn.data.SyntheticDataModule": "synthetic",
}
DEFAULT_SIZE = {"retinamnist": 28, "fundus_folder": 128, "synthetic": 28}
PREPARATION_VERSIONS = {"medmnist": 1, "fundus_disc_square": PREPARATION_VERSION, "synthetic": 1}
# SiameseResNet's defaults
NET_DEFAULTS: dict[str, object] = {
    "backbone": "resnet18",
    "stem": "imagenet",
    "dropout": None,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}
# what a train config's model, net and loss may hold besides what the spec records: settings of
# training or speed that do not change what the trained model computes
NOT_IN_SPEC = {
    "model": {"_target_", "net", "num_classes", "compile", "optimizer", "scheduler"},
    "net": {"_target_", "num_classes", "channels_last", "weights"},
    "loss": {"_target_", "num_classes"},
}


def _section(config: Mapping, key: str) -> Mapping:
    node = config.get(key)
    if not isinstance(node, Mapping):
        raise SpecError(f"model spec: the run config's {key} is not a mapping")
    return node


def _only(node: Mapping, where: str, allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in node if k not in allowed)
    if unknown:
        raise SpecError(
            f"model spec: {where}.{unknown[0]} is not a setting this mtcsnn knows "
            f"({where} may set {', '.join(sorted(allowed))})"
        )


def _kind(node: Mapping, where: str, table: dict[str, str], own: bool) -> str:
    """What the class ``node`` names is, as the spec calls it. In the user's own train config
    (``own``) a subclass of one of the project's classes counts as that class; a checkpoint's
    config must name the project's class itself (nothing is imported for it)."""
    target = node.get("_target_")
    if isinstance(target, str) and target in table:
        return table[target]
    if own and isinstance(target, str):
        try:
            named = get_class(target)
        except Exception:  # not importable: instantiate reports it where it is built
            named = None
        for base, kind in table.items():
            if isinstance(named, type) and issubclass(named, get_class(base)):
                return kind
    raise SpecError(
        f"model spec: {where}._target_={target!r} is none of mtcsnn's ({', '.join(table)})"
    )


# where a train config sets what a spec key records (for errors in the user's own config)
CONFIG_KEY_OF_SPEC = {
    "trained_on.split.val_fraction": "data.val_fraction",
    "trained_on.split.test_fraction": "data.test_fraction",
    "trained_on.split.seed": "data.split_seed",
    "trained_on.split": "data.val_fraction",
    "image_size": "data.size",
    "grades": "model.num_classes",
    "backbone": "model.net.backbone",
    "stem": "model.net.stem",
    "dropout": "model.net.dropout",
    "normalisation.mean": "model.net.mean",
    "normalisation.std": "model.net.std",
}


def spec_of_config(config: Mapping, own: bool = False) -> ModelSpec:
    """The spec of the model a (resolved, plain-dict) train config builds, read value by value.

    Training writes it into every checkpoint (``own=True``: its config's classes may be
    subclasses of the project's, and a value out of the spec's bounds is a ConfigError naming
    the config key); an old checkpoint's saved config is converted with it once it passed
    :func:`check_buildable`. Nothing is instantiated: the config's classes are looked up in
    fixed tables, and unknown settings are refused.
    """
    try:
        return _spec_of_config(config, own)
    except SpecError as err:
        if not (own and err.key):
            raise
        base = err.key.split("[")[0]
        key = CONFIG_KEY_OF_SPEC.get(base) or (
            "loss." + base.removeprefix("head.") if base.startswith("head.") else base
        )
        raise ConfigError(key, err.value, err.wanted) from None


def _spec_of_config(config: Mapping, own: bool) -> ModelSpec:
    model, loss, data = (_section(config, key) for key in ("model", "loss", "data"))
    net = _section(model, "net")
    _kind(model, "model", {"mtcsnn.models.MTCSNNModule": "module"}, own)
    _kind(net, "model.net", {"mtcsnn.models.SiameseResNet": "net"}, own)
    head = _kind(loss, "loss", HEAD_OF_LOSS, own)
    kind = _kind(data, "data", DATA_KIND, own)
    _only(model, "model", NOT_IN_SPEC["model"])
    _only(net, "model.net", NOT_IN_SPEC["net"] | set(NET_DEFAULTS))
    _only(loss, "loss", NOT_IN_SPEC["loss"] | set(HEAD_DEFAULTS[head]))
    grades = model.get("num_classes", 5)
    for where, value in (("model.net", net), ("loss", loss)):
        if value.get("num_classes", grades) != grades:
            raise SpecError(
                f"model spec: {where}.num_classes={value.get('num_classes')!r} differs from "
                f"model.num_classes={grades!r}"
            )
    settings = {key: net.get(key, default) for key, default in NET_DEFAULTS.items()}
    preparation = TRAINED_ON[kind]
    labels = data.get("labels") if kind == "fundus_folder" else None
    raw = {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "backbone": settings["backbone"],
        "stem": settings["stem"],
        "grades": grades,
        "head": {"kind": head, **{k: loss.get(k, d) for k, d in HEAD_DEFAULTS[head].items()}},
        "dropout": settings["dropout"],
        "image_size": data.get("size", DEFAULT_SIZE[kind]),
        "normalisation": {"mean": settings["mean"], "std": settings["std"]},
        "preparation": {"name": preparation, "version": PREPARATION_VERSIONS[preparation]},
        # the file's name only, as text: shown in messages, never opened
        "trained_on": {
            "data": kind,
            "labels": labels_name(labels),
            "split": drawn_split(data) if kind == "fundus_folder" else None,
            "folds": None
            if data.get("folds") is None
            else {
                "folds": data["folds"],
                "fold": data.get("fold", 0),
                "seed": data.get("fold_seed", 0),
            },
        },
    }
    return parse_spec(raw)


def drawn_split(data: Mapping) -> dict:
    """How a folder of photographs is split when its CSV has no split column (the data
    module's defaults where the config leaves a value out)."""
    return {
        "val_fraction": data.get("val_fraction", 0.1),
        "test_fraction": data.get("test_fraction", 0.2),
        "seed": data.get("split_seed", 0),
    }


def labels_name(labels: object) -> str | None:
    """The labels CSV's file name as printable text (at most 255 characters), or None."""
    if not isinstance(labels, str) or not labels:
        return None
    name = Path(labels).name or labels
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    name = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return name.replace("${", "$ {")[:255] or None

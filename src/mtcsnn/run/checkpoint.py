"""Rebuild a trained model from an mtcsnn checkpoint: its weights and its model spec.

A checkpoint is a file from someone else. Its model is rebuilt from the spec it stores
(``mtcsnn_spec``, :mod:`mtcsnn.models.spec`) by plain Python: no ``_target_`` is imported, no
interpolation resolved and no path taken from the file. The run record it also holds
(``mtcsnn_config``) is inert data: never resolved, never built, and never chooses what the
tools read or write (their data paths come from the user's command line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mtcsnn.errors import ConfigError, MTCSNNError
from mtcsnn.grading.calibration import check_temperature
from mtcsnn.grading.referral import REFERRAL_KEY, TEMPERATURE_KEY, Referral, parse_thresholds
from mtcsnn.models.build import build_from_spec
from mtcsnn.models.lit_module import MTCSNNModule
from mtcsnn.models.spec import (
    ModelSpec,
    SpecError,
    parse_spec,
)
from mtcsnn.run.config_spec import spec_of_config


class CheckpointError(MTCSNNError):
    """The file is missing, unreadable or not an mtcsnn checkpoint."""


@dataclass
class Checkpoint:
    module: MTCSNNModule  # weights loaded, in eval mode
    spec: ModelSpec  # what the model is: the only thing it was rebuilt from
    epoch: int | None  # as Lightning stores it, counted from 0
    path: Path
    seed: int | None = None  # the training seed the run record names (a plain int), if any
    # (cut, threshold) pairs val chose when the run was tested, the first cut first; () if none
    referral: tuple[Referral, ...] = ()
    temperature: float | None = None  # the temperature val chose (None: none recorded)

    @property
    def image_size(self) -> int:
        return self.spec.image_size


def build_module(cfg: DictConfig) -> MTCSNNModule:
    """The LightningModule of a (train) config: network, loss, optimiser and schedule.

    For the user's own config only (training, a benchmark); a checkpoint's model is rebuilt
    from its spec (:func:`load_checkpoint`).
    """
    return instantiate(cfg.model, loss=instantiate(cfg.loss))


# What an old checkpoint's config (one written before checkpoints held a spec) may name: the
# project's own model, loss and data classes, and the optimisers and schedules it offers. Such
# a config is only read for plain values (it is never built), but one that names anything else
# (``os.system``, ``builtins.exec`` ...) or holds an interpolation is refused outright.
SAFE_TARGETS = frozenset(
    {
        "mtcsnn.models.MTCSNNModule",
        "mtcsnn.models.SiameseResNet",
        "mtcsnn.losses.PairCrossEntropyLoss",
        "mtcsnn.losses.MultiTaskLoss",
        "mtcsnn.losses.CoralLoss",
        "mtcsnn.losses.CornLoss",
        "mtcsnn.losses.GradeRegressionLoss",
        "mtcsnn.data.RetinaMNISTDataModule",
        "mtcsnn.data.SyntheticDataModule",
        "mtcsnn.data.FundusFolderDataModule",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.MultiStepLR",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.optim.lr_scheduler.StepLR",
        "torch.optim.lr_scheduler.ExponentialLR",
    }
)
# the parts of an old checkpoint's config that its spec is read from
BUILT_FROM_CHECKPOINT = ("model", "loss", "data")
# keys with a meaning to hydra.utils.instantiate: each value is checked like any other
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_convert_", "_recursive_"})


def unsafe_entry(node: object, key: str) -> str | None:
    """The first ``key=value`` under ``node`` that could run code when built, else None.

    Walks dicts and lists recursively (``_args_`` and nested nodes included): every
    ``_target_`` must be in ``SAFE_TARGETS``, no other ``_underscored_`` key is allowed, and
    no string may be an interpolation (``${...}`` would call a resolver).
    """
    if isinstance(node, dict):
        for child_key, child in node.items():
            name = f"{key}.{child_key}"
            if not isinstance(child_key, str):
                return f"{name}: keys must be strings"
            if child_key == "_target_" and not (isinstance(child, str) and child in SAFE_TARGETS):
                return f"{name}={child!r}"
            reserved = child_key.startswith("_") and child_key.endswith("_")
            if reserved and child_key not in HYDRA_KEYS:
                return f"{name}={child!r}"
            found = unsafe_entry(child, name)
            if found:
                return found
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            found = unsafe_entry(child, f"{key}[{i}]")
            if found:
                return found
    elif isinstance(node, str) and "${" in node:
        return f"{key}={node!r}"
    return None


def check_buildable(config: dict, path: Path) -> None:
    """Refuse an old checkpoint's config that names anything but the project's own classes."""
    for section in BUILT_FROM_CHECKPOINT:
        if section not in config:
            raise CheckpointError(f"{path} is not an mtcsnn checkpoint: no {section} in its config")
        found = unsafe_entry(config[section], section)
        if found:
            raise CheckpointError(
                f"{path}: refused to rebuild the model: {found} is not something mtcsnn builds "
                "(a checkpoint may only name the project's own model, loss and data classes and "
                "the optimisers and schedules it offers)"
            )


def initialise_from(module: MTCSNNModule, path: str | Path) -> None:
    """Start a new run from another run's weights (``init_from=<ckpt>``), checked as above.

    Only the weights are taken: the new run has its own schedule, epochs and output dir.
    """
    source = load_checkpoint(path)
    own, theirs = module.state_dict(), source.module.state_dict()
    differing = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    differing += [k for k in theirs if k not in own]
    if differing:
        names = ", ".join(differing[:3]) + (" ..." if len(differing) > 3 else "")
        raise CheckpointError(
            f"init_from={source.path}: its network differs from this run's ({names}); use a "
            "checkpoint of the same backbone, stem and loss head"
        )
    module.load_state_dict(theirs)


def load_checkpoints(paths: object) -> list[Checkpoint]:
    """``ckpt_path=a.ckpt`` or ``ckpt_path=[a.ckpt,b.ckpt,...]`` (an ensemble), each loaded
    as :func:`load_checkpoint`; an ensemble's members must take images of one size, grade on
    one scale and have been trained on images prepared one way."""
    names = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]  # type: ignore[union-attr]
    if not names:
        raise CheckpointError("ckpt_path is an empty list: name at least one checkpoint")
    checkpoints = [load_checkpoint(name) for name in names]
    check_ensemble([c.spec for c in checkpoints])
    return checkpoints


def check_ensemble(specs: list[ModelSpec]) -> None:
    """Members whose probabilities can be averaged: one image size, grades and preparation."""
    sizes = {s.image_size for s in specs}
    if len(sizes) > 1:
        raise CheckpointError(
            f"the checkpoints of an ensemble take images of one size; these take {sorted(sizes)}"
        )
    grades = {s.grades for s in specs}
    if len(grades) > 1:
        raise CheckpointError(
            f"the checkpoints of an ensemble grade on one scale; these have {sorted(grades)} grades"
        )
    preparations = {f"{s.preparation} v{s.preparation_version}" for s in specs}
    if len(preparations) > 1:
        raise CheckpointError(
            "the checkpoints of an ensemble must have been trained on images prepared one way; "
            f"these were prepared as {', '.join(sorted(preparations))}"
        )


def _plain_int(value: object) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def checkpoint_spec(state: dict, path: Path) -> ModelSpec:
    """The spec of a loaded checkpoint, parsed strictly.

    A checkpoint written before checkpoints held a spec (only ``mtcsnn_config``) is converted
    once, in memory, through the allow-list: its ``model``, ``loss`` and ``data`` must name
    only the project's own classes and hold no ``${...}`` (else it is refused in one line),
    and the spec is read from their plain values (:func:`spec_of_config`); nothing of it is
    built or resolved. The file itself is not changed.
    """
    try:
        if "mtcsnn_spec" in state:
            return parse_spec(state["mtcsnn_spec"])
        saved = state.get("mtcsnn_config")
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"{path} is not an mtcsnn checkpoint: it holds no model spec and its "
                "mtcsnn_config is no mapping"
            )
        check_buildable(saved, path)
        return spec_of_config(saved)
    except SpecError as err:
        raise CheckpointError(f"{path}: refused to rebuild the model: {err}") from None
    except RecursionError:  # a saved config nested deeper than any config is
        raise CheckpointError(
            f"{path}: refused to rebuild the model: its saved config is nested too deep"
        ) from None


def check_normalisation(module: MTCSNNModule, spec: ModelSpec, path: Path) -> None:
    """The normalisation the weights carry must be the spec's (finite, std bounded above 0)."""
    for name, wanted in (("mean", spec.mean), ("std", spec.std)):
        value = getattr(module.net, name).flatten().tolist()
        close = len(value) == 3 and all(
            math.isfinite(v) and math.isclose(v, w, rel_tol=1e-5, abs_tol=1e-6)
            for v, w in zip(value, wanted, strict=True)
        )
        if not close:
            raise CheckpointError(
                f"{path}: the weights' normalisation {name} {value[:3]} differs from its spec's "
                f"{list(wanted)}"
            )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load ``path`` safely (``weights_only=True``) and rebuild its model from its spec.

    The model is built by :func:`mtcsnn.models.spec.build_from_spec` from the checkpoint's
    ``mtcsnn_spec``; an old checkpoint without one is converted once (see
    :func:`checkpoint_spec`) or refused in one line. The run record (``mtcsnn_config``) is
    neither resolved nor built: only its ``seed``, when it is a plain integer, is read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:  # no permission, an I/O error: the file is fine, reading is not
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # torch.load raises many kinds on a file that is not its own
        raise CheckpointError(
            f"{path} is not a checkpoint that loads safely (torch.load with weights_only=True "
            f"failed: {type(err).__name__})"
        ) from None
    has_model = isinstance(state, dict) and (state.get("mtcsnn_spec") or state.get("mtcsnn_config"))
    if not has_model or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is not an mtcsnn checkpoint (it holds no model spec and state_dict; "
            "use a .ckpt from a run's checkpoints/ folder)"
        )
    spec = checkpoint_spec(state, path)
    try:
        module = build_from_spec(spec)
    except MTCSNNError as err:  # a spec that parses is built; this is a safety net
        raise CheckpointError(
            f"{path}: the model cannot be rebuilt from its spec ({err})"
        ) from None
    try:
        module.load_state_dict(state["state_dict"])
    except Exception as err:  # missing or extra keys, other shapes, values that are no tensors
        reason = " ".join(str(err).split())[:300] or type(err).__name__  # one line
        raise CheckpointError(
            f"{path}: weights do not fit the model its spec describes ({reason})"
        ) from None
    check_normalisation(module, spec, path)
    module.eval()
    record = state.get("mtcsnn_config")
    seed = _plain_int(record.get("seed")) if isinstance(record, dict) else None
    referral: tuple[Referral, ...] = ()
    temperature = None
    try:
        if state.get(REFERRAL_KEY) is not None:
            referral = parse_thresholds(state[REFERRAL_KEY], spec.grades)
        if state.get(TEMPERATURE_KEY) is not None:
            temperature = check_temperature(state[TEMPERATURE_KEY])
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    epoch = _plain_int(state.get("epoch"))
    return Checkpoint(module, spec, epoch, path, seed, referral, temperature)


def referral_of_models(
    checkpoints: list[Checkpoint], calibrated: bool
) -> tuple[tuple[int, float | None], float | None, str | None]:
    """The referral cut and threshold, and the temperature of the probabilities
    (``calibrated=true``): what val chose for a single model; then why there is no threshold
    (None where there is one). What ``predict`` writes and ``export`` builds in.

    An ensemble, or a model tested before these were kept, gets the default cut and no
    threshold; asking such a model for calibrated probabilities is an error.
    """
    if not isinstance(calibrated, bool):
        raise ConfigError("calibrated", calibrated, "it must be true or false")
    if len(checkpoints) > 1:
        if calibrated:
            raise ConfigError(
                "calibrated", True, "an ensemble has no temperature chosen on val; use false"
            )
        why = "an ensemble's threshold is not chosen on val here (each member's was chosen "
        return (2, None), None, why + "for that member alone)"
    ckpt = checkpoints[0]
    if calibrated and ckpt.temperature is None:
        raise ConfigError(
            "calibrated", True, f"{ckpt.path} records no temperature chosen on val; use false"
        )
    temperature = ckpt.temperature if calibrated else None
    if not ckpt.referral:
        return (2, None), temperature, f"{ckpt.path} records no referral threshold"
    first = ckpt.referral[0]
    threshold = first.scaled_threshold if calibrated else first.threshold
    return (first.cut, threshold), temperature, None

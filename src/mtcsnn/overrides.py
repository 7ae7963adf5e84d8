"""A misspelt key on the command line gets the keys that do exist, before Hydra starts a run.

Hydra already refuses an unknown key (``loss.lamda=1``) but only says it is "not in struct"
and suggests appending it with ``+``; here the message names the key and the keys allowed at
that place, with the closest match first.
"""

from __future__ import annotations

import difflib

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

GROUPS = (
    "data",
    "model",
    "loss",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "experiment",
    "hparams_search",
)


def _split(override: str) -> tuple[str, str] | None:
    if "=" not in override or override.startswith(("+", "~", "-")):
        return None
    key, value = override.split("=", 1)
    return key.strip(), value


def unknown_key_message(overrides: list[str], config_path: str, config_name: str) -> str | None:
    """The message for the first override whose key is not in the config, else None."""
    pairs = [p for p in map(_split, overrides) if p]
    dotted = [(k, v) for k, v in pairs if "." in k and not k.startswith("hydra.")]
    if not dotted:
        return None
    # the config as the group choices make it (first value of a sweep list)
    choices = [f"{k}={v.split(',')[0]}" for k, v in pairs if k in GROUPS]
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_path, version_base="1.3"):
            cfg = compose(config_name, overrides=choices)
    except Exception:  # anything odd: let Hydra itself report it
        return None
    finally:
        GlobalHydra.instance().clear()
    for key, _ in dotted:
        message = _check_key(cfg, key)
        if message:
            return message
    return None


def _check_key(cfg: DictConfig, key: str) -> str | None:
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None  # into a list or a value: leave it to Hydra
        if part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            allowed = [str(k) for k in node.keys()]
            close = difflib.get_close_matches(part, allowed, n=1)
            hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}? " if close else ""
            return (
                f"config error: {key} is not a key of {where}; {hint}"
                f"allowed: {', '.join(sorted(allowed))}"
            )
        node = OmegaConf.select(node, part) if isinstance(node, DictConfig) else None
        if node is None:
            return None
    return None


def missing_arguments_message(cfg: DictConfig, example: str) -> str | None:
    """``ckpt_path is required, e.g. ...`` when a mandatory (``???``) value was not given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"{' and '.join(missing)} {verb} required, e.g. {example}"

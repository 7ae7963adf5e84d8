"""The command-line entry every Hydra command shares: checks first, then one line per error.

Before Hydra starts a run, the command line is checked: a misspelt key gets the keys that do
exist (Hydra only says "not in struct" and suggests ``+``), and an output folder that cannot
be created is named (Hydra would print a traceback). During the run, a mandatory value left
out and any :class:`~mtcsnn.errors.MTCSNNError` end with one ``error:`` line and exit code 1.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from mtcsnn.errors import MTCSNNError
from mtcsnn.run.config import CONFIG_PATH, register_resolvers
from mtcsnn.run.failures import BuildError, our_error

# the checkpoint named in the example command lines the checkpoint tools print
EXAMPLE_CKPT = "logs/train/runs/<date>_<time>/checkpoints/epoch_012.ckpt"
# flags after which Hydra prints something and starts no run
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion"}


@functools.cache  # asked up to three times per command line
def config_groups() -> frozenset[str]:
    """The config groups (folders of ``conf/``, nested ones as ``model/optimizer``):
    ``data=synthetic`` picks a file, not a key."""
    root = Path(CONFIG_PATH)
    return frozenset(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


def unknown_option_message(overrides: list[str]) -> str | None:
    """``model=resnet19``: the group's options, in one line (Hydra prints a dozen)."""
    groups = config_groups()
    for key, value in filter(None, map(_split, overrides)):
        if key not in groups or key.startswith("hydra"):
            continue  # Hydra's own groups (launcher, help) hold its plugins' configs too
        options = sorted(p.stem for p in (Path(CONFIG_PATH) / key).glob("*.yaml"))
        for choice in value.split(","):
            choice = choice.strip()
            if choice in options or "(" in choice:
                continue  # glob(...), range(...): a sweep Hydra expands
            close = difflib.get_close_matches(choice, options, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            if choice == "null":  # Hydra stops on it with a traceback
                hint = f"to leave the group out, do not name it or write ~{key}; "
            return (
                f"config error: {key}={choice} is not an option; {hint}"
                f"choose one of: {', '.join(options)}"
            )
    return None


def _split(override: str) -> tuple[str, str] | None:
    if "=" not in override or override.startswith(("+", "~", "-")):
        return None
    key, value = override.split("=", 1)
    return key.strip(), value


def _compose_choices(overrides: list[str], config_name: str) -> DictConfig | None:
    """The config as the group choices on the command line make it (a sweep's first value)."""
    groups = config_groups()
    pairs = [p for p in map(_split, overrides) if p]
    choices = [f"{k}={v.split(',')[0]}" for k, v in pairs if k in groups]
    choices += [f"{k}={v}" for k, v in pairs if k == "paths.log_dir"]
    return _compose(tuple(choices), config_name)


@functools.lru_cache(maxsize=4)
def _compose(choices: tuple[str, ...], config_name: str) -> DictConfig | None:
    """Composed once per command line: the key check and the output-folder check share it."""
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
            return compose(config_name, overrides=list(choices))
    except Exception:  # anything odd: let Hydra itself report it
        return None
    finally:
        GlobalHydra.instance().clear()


def unknown_key_message(overrides: list[str], config_name: str) -> str | None:
    """The message for the first override whose key is not in the config, else None."""
    groups = config_groups()
    keys = [
        key
        for key, _ in filter(None, map(_split, overrides))
        if key not in groups and "/" not in key and key.split(".")[0] != "hydra"
    ]
    if not keys:
        return None
    cfg = _compose_choices(overrides, config_name)
    if cfg is None:
        return None
    for key in keys:
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
        if part not in node.keys():  # `in node` is False for a mandatory (???) value
            where = ".".join(parts[:depth]) or "the top level"
            allowed = [str(k) for k in node.keys()]
            close = difflib.get_close_matches(part, allowed, n=1)
            hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}? " if close else ""
            return (
                f"config error: {key} is not a key of {where}; {hint}"
                f"allowed: {', '.join(sorted(allowed))}"
            )
        # a value such as ${hydra:...} cannot be resolved before Hydra runs: not needed here
        node = OmegaConf.select(node, part, throw_on_resolution_failure=False)
        if node is None:
            return None
    return None


def unwritable_output_message(argv: list[str], config_name: str) -> str | None:
    """Why the folder this command would write into cannot be created, else None."""
    pairs = dict(p for p in map(_split, [a for a in argv if not a.startswith("-")]) if p)
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    target = pairs.get(key)
    if target is None:
        cfg = _compose_choices(list(argv), config_name)
        log_dir = OmegaConf.select(cfg, "paths.log_dir") if cfg is not None else None
        if not isinstance(log_dir, str) or "${" in log_dir:
            return None
        target = log_dir
    path = Path(target.strip("'\"")).expanduser().absolute()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"cannot create the output folder {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create the output folder {path}: no write permission in {existing}"
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists; one that cannot be looked at counts not."""
    for candidate in (path, *path.parents):
        try:
            candidate.stat()
            return candidate
        except OSError:  # absent, or a parent without search permission: go up
            continue
    return Path(path.anchor)


def missing_arguments_message(cfg: DictConfig, example: str) -> str | None:
    """``ckpt_path is required, e.g. ...`` when a mandatory (``???``) value was not given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"{' and '.join(missing)} {verb} required, e.g. {example}"


def register_launchers() -> None:
    """Our Hydra launchers, also where Hydra's plugin scan cannot see them (an editable
    install maps ``hydra_plugins.mtcsnn_slurm_launcher`` through a finder that the scan does
    not walk); without the cluster extra there is none, nor in an editable install made before
    the launcher existed (every other command still runs; reinstalling adds it)."""
    from importlib.util import find_spec

    needed = ("hydra_plugins.hydra_submitit_launcher", "hydra_plugins.mtcsnn_slurm_launcher")
    if any(find_spec(name) is None for name in needed):
        return
    from hydra.core.plugins import Plugins

    from hydra_plugins.mtcsnn_slurm_launcher import SlurmLauncher

    Plugins.instance().register(SlurmLauncher)


def command(
    config_name: str, example: str = ""
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Make ``task(cfg)`` a command: ``python -m mtcsnn.<name> [overrides]``.

    ``example`` is the command line shown when a mandatory value is missing.

    The command line is checked before ``task`` runs, so a command module imports PyTorch and
    Lightning inside ``task``, not at its top: ``--help``, a misspelt key or a missing argument
    then answer in about a second (``tests/test_command_line.py`` checks that none loads torch).
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)  # Hydra names the job (and its log file) after the task
        def one_line_errors(cfg: DictConfig) -> Any:
            missing = missing_arguments_message(cfg, example or f"python -m mtcsnn.{config_name}")
            if missing:
                raise SystemExit(f"error: {missing}")
            try:
                return task(cfg)
            except MTCSNNError as err:
                raise SystemExit(f"error: {err}") from None
            except InstantiationException as err:
                # Hydra wraps an error of ours raised while an object of the config is built
                inner = our_error(err)
                if isinstance(inner, MTCSNNError) and not isinstance(inner, BuildError):
                    raise SystemExit(f"error: {inner}") from None
                raise

        run = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(
            one_line_errors
        )

        @functools.wraps(task)
        def main() -> Any:
            register_resolvers()  # the configs composed below use them (idempotent)
            register_launchers()
            argv = sys.argv[1:]
            overrides = [a for a in argv if not a.startswith("-")]
            message = unknown_option_message(overrides) or unknown_key_message(
                overrides, config_name
            )
            if not message and not set(argv) & INFO_FLAGS:
                message = unwritable_output_message(argv, config_name)
            if message:
                raise SystemExit(f"error: {message}")
            return run()

        return main

    return decorate

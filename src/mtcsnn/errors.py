"""Errors that the command-line tools report as one line instead of a traceback."""

from __future__ import annotations

import importlib


class MTCSNNError(Exception):
    """Base class: a problem the user can fix (bad config, missing data)."""


class ConfigError(MTCSNNError, ValueError):
    """A config value is not allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error: {key}={value!r} is not allowed; {allowed}")


class StoppedError(MTCSNNError):
    """The run was stopped from outside (SIGTERM, Ctrl-C, SLURM's warning) and can be resumed;
    ``signal`` names the signal (``"SIGTERM"``, ``"SIGINT"``, ``"SIGUSR2"``)."""

    def __init__(self, message: str, signal: str | None = None) -> None:
        super().__init__(message)
        self.signal = signal


class DivergenceError(MTCSNNError):
    """The training loss is NaN or infinite."""


class DataError(MTCSNNError):
    """The dataset is missing or cannot be read."""


class WriteError(MTCSNNError, OSError):
    """A file could not be written (a full disk, a folder without write permission)."""


def check_choice(key: str, value: object, allowed: tuple) -> None:
    """One of ``allowed``, else a ConfigError naming them (``True`` is never ``1`` here)."""
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(key, value, "choose one of: " + ", ".join(map(str, allowed)))


def check_optional_share(key: str, value: object) -> None:
    """null (none) or a number from 0 to 1, 1 excluded (a dropout or smoothing share)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is not None and not (number and 0 <= value < 1):
        raise ConfigError(key, value, "it must be null (none) or a number from 0 to 1 (1 excluded)")


class MissingExtraError(MTCSNNError):
    """A feature needs a package of an optional extra that is not installed."""


def require(modules: str | tuple[str, ...], extra: str, feature: str) -> None:
    """Import one of ``modules`` or say which extra to install for ``feature``."""
    names = (modules,) if isinstance(modules, str) else modules
    for name in names:
        try:
            importlib.import_module(name)
            return
        except ImportError:
            continue
    raise MissingExtraError(
        f"{feature} needs {' or '.join(names)}, which is not installed: "
        f"pip install 'mtcsnn[{extra}]'"
    )

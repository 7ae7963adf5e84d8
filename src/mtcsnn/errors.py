"""Errors that the command-line tools report as one line instead of a traceback."""


class MTCSNNError(Exception):
    """Base class: a problem the user can fix (bad config, missing data)."""


class ConfigError(MTCSNNError, ValueError):
    """A config value is not allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error: {key}={value!r} is not allowed; {allowed}")


class StoppedError(MTCSNNError):
    """The run was stopped from outside (SIGTERM) and can be resumed."""


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

"""Errors meant for people: the CLI prints their message on one line and exits 1."""


def first_line(err: BaseException) -> str:
    """An exception's first non-empty line (libraries put the gist there), or its type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class EtrmtrmError(Exception):
    """Base class of every error the CLI reports without a traceback."""


class ConfigError(EtrmtrmError):
    """experiments.toml or a --set override is wrong."""


class ConfigKeyError(ConfigError):
    """One key's value is wrong where a pydantic error does not carry the key (an encoder's name or settings,
    checked by the encoder registry); `key` is its dotted path, so the experiments file can name the layer
    that set it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class PluginError(EtrmtrmError):
    """An encoder's code breaks the registry's or the read's contract (encoders/registry.py, encoders/base.py):
    a plugin's fault, or an in-tree encoder's, never the experiments file's."""


class DataError(EtrmtrmError):
    """A task file or data source is wrong or missing."""


class CheckpointError(EtrmtrmError):
    """A checkpoint is missing, unreadable, or does not match the model."""


class RunError(EtrmtrmError):
    """A run directory is in a state that forbids the requested action."""


class PeerFailed(EtrmtrmError):
    """Another process of a torchrun launch failed, and reports why itself: this one stops without a word."""

"""Errors meant for people: the CLI prints their message on one line and exits 1."""


class EtrmtrmError(Exception):
    """Base class of every error the CLI reports without a traceback."""


class ConfigError(EtrmtrmError):
    """experiments.toml or a --set override is wrong."""


class DataError(EtrmtrmError):
    """A task file or data source is wrong or missing."""


class CheckpointError(EtrmtrmError):
    """A checkpoint is missing, unreadable, or does not match the model."""


class RunError(EtrmtrmError):
    """A run directory is in a state that forbids the requested action."""

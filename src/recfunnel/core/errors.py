"""Errors that tell the user what to do next.

Every error recfunnel raises on bad input derives from :class:`RecfunnelError`, so callers
(CLI, server) can turn them into clean messages instead of tracebacks.
"""

from __future__ import annotations

from typing import Any


class RecfunnelError(Exception):
    """Base class of recfunnel's own errors."""


class DatasetNotFound(RecfunnelError):
    """A dataset's files are not where we looked."""


class DatasetFormatError(RecfunnelError):
    """A dataset file exists but does not have the expected columns or shape."""


class DownloadError(RecfunnelError):
    """A download failed (network, HTTP status); the message names the URL."""


class ChecksumMismatch(RecfunnelError):
    """A downloaded archive does not match its published checksum."""


class ConfigError(RecfunnelError):
    """A configuration value is missing, unknown or of the wrong type."""


class UnknownUser(RecfunnelError, KeyError):
    """A user id is not in the training data."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class UnknownItem(RecfunnelError, KeyError):
    """An item id is not in the catalog."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFittedError(RecfunnelError, RuntimeError):
    """A stage or pipeline was asked to answer before it learned what it needs (``fit``,
    or ``tune`` for one that learns on validation users); the message says which."""


class StageContractError(RecfunnelError):
    """A stage returned something the funnel cannot use (a head stage whose output is not a
    permutation of its head); the message names the stage."""


class LeakageError(RecfunnelError):
    """Something was about to learn from held-out (validation or test) data."""


class MissingDependency(RecfunnelError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


def require(module: str, extra: str, why: str = "") -> Any:
    """Import an optional dependency, or raise :class:`MissingDependency` naming the extra
    that installs it: the one way recfunnel reports a missing optional package."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f"{why} needs {module!r}" if why else f"{module!r} is needed here"
        raise MissingDependency(f"{need}: pip install 'recfunnel[{extra}]' ({exc})") from exc

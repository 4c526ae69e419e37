"""The ``recfunnel`` command line: one module per command, one app, one error handler."""

from recfunnel.cli import data, diagnose, enrich, eval, serve, train  # noqa: F401  (registers)
from recfunnel.cli.app import app

__all__ = ["app"]

"""The ``recfunnel`` command line: one module per command, one app, one error handler."""

from recfunnel.cli import (  # noqa: F401  (registers the commands)
    config,
    data,
    diagnose,
    enrich,
    eval,
    reproduce,
    serve,
    train,
)
from recfunnel.cli.app import app

__all__ = ["app"]

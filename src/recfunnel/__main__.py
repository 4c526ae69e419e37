"""``python -m recfunnel``: the command line."""

from recfunnel.cli import app

app()

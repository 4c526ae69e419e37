"""``recfunnel config``: a config file checked and printed with every default filled in."""

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from recfunnel.cli.app import app, read_config
from recfunnel.core.config import parse_config, to_toml

Kind = Literal["eval", "diagnose", "serve", "train"]


def guess_kind(raw: dict[str, Any]) -> Kind:
    """Which command a config file is for, from the tables only that command reads."""
    if "diagnose" in raw:
        return "diagnose"
    if "pipeline" in raw:
        return "serve"
    if {"examples", "lora", "out"} & set(raw):
        return "train"
    return "eval"


def config_class(kind: Kind) -> Any:
    """The config model each command reads."""
    if kind == "eval":
        from recfunnel.evaluate.config import ExperimentConfig

        return ExperimentConfig
    if kind == "diagnose":
        from recfunnel.evaluate.config import DiagnoseConfig

        return DiagnoseConfig
    if kind == "serve":
        from recfunnel.serve.config import ServeConfig

        return ServeConfig
    from recfunnel.train.config import TrainConfig

    return TrainConfig


@app.command("config")
def config_cmd(
    path: Annotated[Path, typer.Argument(help="A config TOML (see configs/).")],
    kind: Annotated[
        str,
        typer.Option(
            help="The command that reads it: eval, diagnose, "
            "serve, train, or auto (from its tables)."
        ),
    ] = "auto",
) -> None:
    """Check a config and print it as TOML with every default filled in (what a run uses).

    Every field is validated as the command would; a bad one is named by its dotted path.
    The output parses back to the same config."""
    if kind not in ("auto", "eval", "diagnose", "serve", "train"):
        raise typer.BadParameter(f"--kind must be auto, eval, diagnose, serve or train, "
                                 f"not {kind!r}")  # fmt: skip
    raw = read_config(path)
    cls = config_class(guess_kind(raw) if kind == "auto" else kind)  # type: ignore[arg-type]
    typer.echo(to_toml(parse_config(raw, cls, str(path))), nl=False)

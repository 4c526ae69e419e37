"""The ``recfunnel`` app and what every command shares.

Every command gets ``--quiet``, ``--verbose`` and ``--offline`` and one error handler:
recfunnel's own
errors (bad config, missing dataset, unknown name) print one clear message and exit with
status 2, never a traceback.
"""

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recfunnel.core import progress
from recfunnel.core.errors import RecfunnelError
from recfunnel.core.paths import OFFLINE_ENV

console = Console(stderr=True)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what each step does.")]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder holding dataset folders (else $RECFUNNEL_DATA)."),
]
Offline = Annotated[
    bool, typer.Option("--offline", help="Never download a dataset (else $RECFUNNEL_OFFLINE).")
]


def fail(exc: RecfunnelError) -> typer.Exit:
    # escaped: a message's own brackets ("pip install 'recfunnel[train]'") are not markup
    console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
    return typer.Exit(2)


def setup_output(quiet: bool, verbose: bool, offline: bool = False) -> None:
    """Progress bars off with ``quiet``; INFO logs with ``verbose``; no downloads with
    ``offline``."""
    progress.set_quiet(quiet)
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with ``--quiet``/``--verbose`` added and recfunnel's errors turned into one
    message and exit status 2."""
    sig = inspect.signature(fn)
    wants = {"quiet", "verbose"} & set(sig.parameters)

    @functools.wraps(fn)
    def command(*args: Any, quiet: bool = False, verbose: bool = False, offline: bool = False,
                **kwargs: Any) -> Any:  # fmt: skip
        setup_output(quiet, verbose, offline)
        kwargs.update({k: v for k, v in (("quiet", quiet), ("verbose", verbose)) if k in wants})
        try:
            return fn(*args, **kwargs)
        except RecfunnelError as exc:
            raise fail(exc) from None

    common = {"quiet": Quiet, "verbose": Verbose, "offline": Offline}
    kept = [p for p in sig.parameters.values() if p.name not in common]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=a)
             for n, a in common.items()]  # fmt: skip
    command.__signature__ = sig.replace(parameters=[*kept, *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {**fn.__annotations__, **common}
    return command


class App(typer.Typer):
    """A Typer app whose every command has the common options and error handling."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(_common(fn))


HELP = {"help_option_names": ["-h", "--help"]}

app = App(
    help="recfunnel: retrieval → ranker → LLM, every stage measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=HELP,
)
data_app = App(help="List, inspect and download datasets.", no_args_is_help=True,
               context_settings=HELP)  # fmt: skip
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from recfunnel.core import __version__

        typer.echo(f"recfunnel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print recfunnel's version and exit.",
        ),
    ] = False,
) -> None:
    """recfunnel: retrieval → ranker → LLM, every stage measured."""


def read_config(path: Path) -> dict[str, Any]:
    """A config TOML as a dict; a folder given as the file is named as one."""
    from recfunnel.core.config import read_toml
    from recfunnel.core.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"config {path} is a folder, not a TOML file: give the file itself "
                          f"(e.g. {path / 'cold-start.toml'})")  # fmt: skip
    return read_toml(path)


def csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def table_console(json_to_stdout: bool = False) -> Console:
    """Where a result table goes: stdout, unless stdout carries the JSON."""
    return Console(stderr=json_to_stdout, width=None if sys.stdout.isatty() else 220)


def metrics_table(result: Any, metrics: list[str], fallbacks: Sequence[Any] = ()) -> Table:
    """Means ± std over seeds; a row whose LLM stage fell back is marked with "!" and its
    fallback and invalid rates (``fallbacks``: :func:`recfunnel.cli.fallback.llm_fallbacks`)."""
    table = Table(title=f"{result.dataset} · {result.protocol} · seeds {result.seeds} · "
                        f"{users_per_seed(result)}")  # fmt: skip
    table.add_column("pipeline", style="bold")
    for m in metrics:
        table.add_column(m, justify="right")
    fell: dict[str, list[str]] = {}
    for f in fallbacks:
        fell.setdefault(f.pipeline, []).append(
            f"{f.stage}: fallback {f.fallback_rate:.2f}, invalid {f.invalid_rate:.2f}"
        )
    if fell:
        table.add_column("LLM stage fell back", style="yellow")
        table.caption = "! an LLM stage fell back to its input order on some rows"
    for name, stats in result.summary().items():
        cells = []
        for m in metrics:
            mean, std = stats[m]
            cells.append(f"{mean:.0f}±{std:.0f}" if mean >= 100 else f"{mean:.3f}±{std:.3f}")
        if fell:
            cells.append("; ".join(fell.get(name, [])))
        table.add_row(f"{name} !" if name in fell else name, *cells)
    return table


def users_per_seed(result: Any) -> str:
    """How many test users each seed had (the table's means are over these)."""
    per_seed: dict[int, int] = {}
    for r in result.results:
        per_seed.setdefault(r.seed, r.n_users)
    counts = set(per_seed.values())
    if len(counts) == 1:
        return f"{counts.pop()} test users per seed"
    return "test users " + ", ".join(f"{n} (seed {s})" for s, n in per_seed.items())


def write_json(payload: Any, path: str, quiet: bool) -> None:
    """``payload`` as strict JSON to ``path`` ('-': stdout)."""
    import json

    text = json.dumps(payload, indent=2, allow_nan=False)
    if path == "-":
        sys.stdout.write(text + "\n")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    if not quiet:
        console.print(f"wrote {path}")

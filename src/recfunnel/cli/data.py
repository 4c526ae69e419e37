"""``recfunnel data list|info|fetch``: the datasets recfunnel knows."""

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from recfunnel.cli.app import DataDir, console, data_app, table_console


@data_app.command("list")
def data_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Datasets recfunnel knows, where they are expected, and whether they can be fetched."""
    from recfunnel.data.registry import DATASETS

    rows = [
        {"name": s.name, "folder": s.folder, "files": list(s.files),
         "fetch": s.archive.path if s.archive else None, "about": s.about}
        for s in DATASETS.values()
    ]  # fmt: skip
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="datasets")
    for col in ("name", "folder", "fetch", "about"):
        table.add_column(col)
    for r in rows:
        fetchable = "on first use" if r["fetch"] else "ships in data dir"
        table.add_row(str(r["name"]), str(r["folder"]), fetchable, str(r["about"]))
    table_console().print(table)


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load a dataset (fetching it if needed) and print its size."""
    from recfunnel.data.load import load_dataset

    d = load_dataset(name, data_dir)
    info = {
        "name": d.name,
        "users": d.interactions.n_users,
        "items": d.catalog.n_items,
        "interactions": len(d.interactions),
        "ratings": d.interactions.has_ratings,
        "timestamps_real": d.timestamps_real,
        "example_item": d.catalog.texts[0] if d.catalog.n_items else None,
    }
    if json_out:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        for k, v in info.items():
            table_console().print(f"{k:>16}: {v}", highlight=False)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m, ml-latest-small, serendipity-2018")],
    data_dir: DataDir = None,
    url: Annotated[
        str | None, typer.Option(help="Base URL of a mirror (else $RECFUNNEL_DATA_URL).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Download even if the files are there.")] = False,
) -> None:
    """Download a dataset's original archive, verify it and unpack it."""
    from recfunnel.core.errors import ConfigError
    from recfunnel.core.paths import offline
    from recfunnel.data.fetch import fetch

    if offline():
        raise ConfigError("recfunnel data fetch downloads: it cannot run with --offline")
    path = fetch(name, data_dir, url=url, force=force)
    console.print(f"{name} is in {path}")

"""``recfunnel reproduce``: every published table, by the exact command that made it.

One entry per table of the README and the documentation. ``--list`` names them;
``recfunnel reproduce NAME`` runs the entry's command into ``out/`` and prints its table;
``--markdown`` writes the documentation's "Reproducing" page from this same list (a test
checks that the page is current). Entries that publish speeds refuse to start on a busy
machine: a speed measured beside other work is not the machine's speed.
"""

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recfunnel.cli.app import app, console, table_console
from recfunnel.core.errors import ConfigError

QUIET_LOAD = 0.5
"""Load average per core below which the machine counts as quiet."""


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    where: str
    """The README or documentation section the table is in."""
    commands: list[str]
    """Shell commands, run in order from the repository root."""
    output: str
    """What the last command writes (JSON), read to print the table."""
    table: str
    """How to print it: 'eval', 'diagnose', or 'json' (the benchmark prints its own)."""
    noise: str
    """How close a rerun lands, and why."""
    duration: str
    """Wall time on the reference machine (2 cores), to plan a run."""
    speed: bool = False
    """Publishes speeds or wall times: refuses a busy machine."""
    metrics: list[str] = field(default_factory=list)
    """Columns of an 'eval'/'diagnose' table (default: every metric in the file)."""


SAME = "identical on a rerun: every stage is seeded, the LLM decodes greedily"
ENTRIES: list[Entry] = [
    Entry(
        "cold-start", "Cold-start retrieval baselines (the main job, `make run`)",
        "README: What it shows",
        ["recfunnel eval --config configs/cold-start.toml --json out/cold-start.json --quiet"],
        "out/cold-start.json", "eval", SAME, "1 min",
        metrics=["hr@10", "ndcg@10", "recall@200", "unique@10", "gini@10"],
    ),
]  # fmt: skip


def entry(name: str) -> Entry:
    for e in ENTRIES:
        if e.name == name:
            return e
    raise ConfigError(f"no reproducible table {name!r}; see `recfunnel reproduce --list`")


def load_average() -> tuple[float, int]:
    """The 1-minute load average and the number of cores."""
    return os.getloadavg()[0], os.cpu_count() or 1


def quiet_machine() -> tuple[bool, str]:
    load, cores = load_average()
    quiet = load / cores < QUIET_LOAD
    state = "quiet" if quiet else "busy: other work is running"
    return quiet, f"load average {load:.2f} on {cores} cores ({state})"


def print_table(e: Entry) -> None:
    path = Path(e.output)
    if not path.is_file():
        raise ConfigError(f"{e.name}: {path} was not written")
    doc = json.loads(path.read_text())
    printer = PRINTERS.get(e.table)
    if printer is None:
        return
    table_console().print(printer(doc, e))


def eval_table(doc: dict[str, Any], e: Entry) -> Table:
    import numpy as np

    runs: dict[str, list[dict[str, float]]] = {}
    for r in doc["results"]:
        runs.setdefault(r["pipeline"], []).append(r["metrics"])
    metrics = e.metrics or list(next(iter(runs.values()))[0])
    t = Table(title=f"{e.title} — {doc['dataset']}, {doc['protocol']}, seeds {doc['seeds']}")
    t.add_column("pipeline", style="bold")
    for m in metrics:
        t.add_column(m, justify="right")
    for name, rows in runs.items():
        cells = []
        for m in metrics:
            v = [r[m] for r in rows if r.get(m) is not None]
            mean = float(np.mean(v)) if v else float("nan")
            cells.append(f"{mean:.0f}" if abs(mean) >= 100 else f"{mean:.3f}")
        t.add_row(name, *cells)
    return t


def diagnose_table(doc: dict[str, Any], e: Entry) -> Table:
    metrics = e.metrics or doc["test_metrics"]
    t = Table(title=f"{e.title} — {doc['dataset']}, {doc['protocol']}, seeds {doc['seeds']}")
    t.add_column("pipeline", style="bold")
    for m in metrics:
        t.add_column(m, justify="right")
    t.add_column(f"vs {doc['baseline']} (Δ {metrics[0]}, p Holm)", justify="right")
    tests = {(c["pipeline"], c["metric"]): c for c in doc["comparisons"]
             if c["family"] == "baseline" and c["over"] == "users"}  # fmt: skip
    for p in doc["pipelines"]:
        cells = [f"{p['metrics'][m]['mean']:.3f}" for m in metrics]
        c = tests.get((p["name"], metrics[0]))
        cells.append(f"{c['mean_diff']:+.3f}, {c['p_holm']:.2g}" if c else "—")
        t.add_row(p["name"], *cells)
    return t


PRINTERS: dict[str, Callable[[dict[str, Any], Entry], Table]] = {
    "eval": eval_table,
    "diagnose": diagnose_table,
}


def markdown() -> str:
    """The documentation's "Reproducing" page."""
    lines = [
        "# Reproducing every figure",
        "",
        "Every table in the README and in this documentation comes from one entry below, "
        "run by `recfunnel reproduce NAME` from the repository root (it runs the commands "
        "shown, writes into `out/` and prints the table). `recfunnel reproduce --list` "
        "prints this list. Durations are wall times on the reference machine (2 CPU "
        "cores, no GPU); entries marked *speed* publish speeds and refuse to start when "
        "the machine is busy (load average at or above "
        f"{QUIET_LOAD} per core), because a speed measured beside other work is not the "
        "machine's.",
        "",
        "This page is generated from `src/recfunnel/cli/reproduce.py` "
        "(`recfunnel reproduce --markdown`); a test keeps it current.",
        "",
    ]
    for e in ENTRIES:
        lines += [f"## `{e.name}`: {e.title}", "", f"- Published in: {e.where}",
                  f"- Duration: {e.duration}" + (" (*speed*: needs a quiet machine)"
                                                  if e.speed else ""),
                  f"- Noise: {e.noise}", "", "```bash", *e.commands, "```", ""]  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"


@app.command("reproduce")
def reproduce_cmd(
    name: Annotated[str | None, typer.Argument(help="The table to reproduce.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="Name every table.")] = False,
    markdown_: Annotated[
        bool, typer.Option("--markdown", help="Print the documentation's page.")
    ] = False,
    busy_ok: Annotated[
        bool, typer.Option("--busy-ok", help="Run a speed entry on a busy machine anyway.")
    ] = False,
    quiet: bool = False,
) -> None:
    """Rerun the exact command behind a published table and print the table."""
    if markdown_:
        sys.stdout.write(markdown())
        return
    if list_ or name is None:
        t = Table(title="reproducible tables (recfunnel reproduce NAME)")
        for col in ("name", "table", "where", "duration"):
            t.add_column(col)
        for e in ENTRIES:
            t.add_row(e.name, e.title, e.where, e.duration + (" · speed" if e.speed else ""))
        table_console().print(t)
        return
    e = entry(name)
    quiet_now, state = quiet_machine()
    console.print(state)
    if e.speed and not quiet_now and not busy_ok:
        raise ConfigError(
            f"{e.name} publishes speeds and the machine is busy ({state}); wait for a quiet "
            "machine, or pass --busy-ok to run it anyway (its speeds are then not comparable)"
        )
    Path("out").mkdir(exist_ok=True)
    for command in e.commands:
        if not quiet:
            console.print(f"$ {command}")
        done = subprocess.run(argv(command), check=False)
        if done.returncode != 0:
            raise ConfigError(f"{e.name}: `{command}` exited with {done.returncode}")
    if not quiet:
        print_table(e)
        console.print(f"noise: {e.noise}; {state}")


def argv(command: str) -> list[str]:
    """A command's words, ``recfunnel`` and ``python`` run by this very interpreter (so
    the entry runs with the recfunnel that lists it, whatever is on PATH)."""
    words = shlex.split(command)
    if words[0] == "recfunnel":
        return [sys.executable, "-m", "recfunnel", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    return words

"""``recfunnel reproduce``: every published table, by the exact command that made it.

One entry per table of the README and the documentation. ``--list`` names them;
``recfunnel reproduce NAME`` runs the entry's command into ``out/`` and prints its table;
``--markdown`` writes the documentation's "Reproducing" page from this same list (a test
checks that the page is current). Entries that publish speeds refuse to start on a busy
machine: a speed measured beside other work is not the machine's speed.
"""

import json
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
from recfunnel.core.machine import QUIET_LOAD, quiet_machine


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
TRAINED = (
    "the training run is seeded, but LoRA training on CPU is not bit-exact across "
    "torch builds and CPUs (its arithmetic follows the CPU: bf16 mixed precision where "
    "native, float32 elsewhere; train.json records which): a rerun lands within about "
    ".005 NDCG@10"
)
SPEED = (
    "speeds vary by up to ~10% between quiet runs on different days (the virtual machine, "
    "not the code: ratios between rows hold); the script prints the machine and its load"
)
DIAG = "diagnose"
TOP = ["hr@10", "ndcg@10", "recall@200", "unique@10", "gini@10"]
"""The columns an eval table prints: accuracy, pool recall, exposure."""
ASPECTS_CLASSICAL = "mf,mf+mmr,mf+dpp,mf+fair"  # the baseline row is kept anyway
ENTRIES: list[Entry] = [
    Entry(
        "cold-start", "Cold-start baselines and the learned ranker (the main job, `make run`)",
        "README: What it shows; Results: the cold-start table",
        ["recfunnel eval --config configs/cold-start.toml --json out/cold-start.json --quiet"],
        "out/cold-start.json", "eval", SAME,
        "3 min (the first run fetches the data and embeds 9,742 titles)",
        metrics=TOP,
    ),
    Entry(
        "stacked", "The stacked funnel: the learned ranker, its exposure step, the LLM as features",
        "README: What it shows; Results: the stacked funnel",
        ["recfunnel diagnose --config configs/cold-start-stacked.toml --out out/stacked"],
        "out/stacked/diagnosis.json", DIAG, SAME,
        "60 min from an empty answer cache (1,200 users' LLM features), 10 min cached",
    ),
    Entry(
        "lastfm", "Second domain: Last.fm, cold-start, retrieval and the learned ranker",
        "Results: three domains",
        ["recfunnel eval --config configs/lastfm-cold-start.toml --json out/lastfm.json --quiet"],
        "out/lastfm.json", "eval", SAME, "15 min",
        metrics=TOP,
    ),
    Entry(
        "amazon", "Third domain: Amazon Video Games, leave-last-out, retrieval and the ranker",
        "Results: three domains",
        ["recfunnel eval --config configs/amazon-leave-last-out.toml --json out/amazon.json "
         "--quiet"],
        "out/amazon.json", "eval", SAME, "25 min (the first run embeds 16,859 titles)",
        metrics=TOP,
    ),
    Entry(
        "lastfm-llm", "Second domain, the LLM rows: Last.fm cold-start, a stated sample",
        "Results: three domains",
        ["recfunnel diagnose --config configs/lastfm-cold-start-llm.toml --out out/lastfm-llm"],
        "out/lastfm-llm/diagnosis.json", DIAG, SAME,
        "30 min from an empty answer cache (600 users' LLM features)",
    ),
    Entry(
        "amazon-llm", "Third domain, the LLM rows: Amazon Video Games, a stated sample",
        "Results: three domains",
        ["recfunnel diagnose --config configs/amazon-leave-last-out-llm.toml "
         "--out out/amazon-llm"],
        "out/amazon-llm/diagnosis.json", DIAG, SAME,
        "35 min from an empty answer cache (2,100 users' LLM features)",
    ),
    Entry(
        "llm-rerankers", "Zero-shot LLM reranking of the hybrid pool",
        "Results: zero-shot LLM reranking",
        ["recfunnel eval --pipelines popularity,hybrid,hybrid+llm-verbalizer,"
         "hybrid+llm-permutation,hybrid+llm-pointwise --users 30 --seeds 3 "
         "--metrics hr@10,ndcg@10,unique@10 --json out/llm-rerankers.json --quiet"],
        "out/llm-rerankers.json", "eval", SAME, "25 min from an empty answer cache",
    ),
    Entry(
        "llm-features-cost", "What the LLM feature stage costs per user, by back-end",
        "Results: what the LLM features cost",
        ["python benchmarks/llm_features_cost.py --users 20 --json out/llm-features-cost.json"],
        "out/llm-features-cost.json", "json", SPEED, "5 min", speed=True,
    ),
    Entry(
        "diagnosis", "Cold-start diagnosis: the naive funnel's failure, stage by stage",
        "Results: cold-start diagnosis",
        ["recfunnel diagnose --config configs/diagnose-cold-start.toml --out out/diagnosis"],
        "out/diagnosis/diagnosis.json", DIAG, SAME, "50 min from an empty answer cache",
    ),
    Entry(
        "routing", "Where the LLM helps, by history length",
        "Results: routing",
        ["recfunnel eval --config configs/routing.toml --by-history --plot out/buckets.png "
         "--json out/routing.json --quiet"],
        "out/routing.json", "eval", SAME, "25 min from an empty answer cache",
    ),
    Entry(
        "llamarec", "LlamaRec's protocol: sequential retrieval, a learned ranker, the LLM",
        "Results: LlamaRec's protocol",
        ["recfunnel eval --config configs/llamarec.toml --json out/llamarec.json --quiet"],
        "out/llamarec.json", "eval", SAME, "40 min from an empty answer cache, 15 min cached",
    ),
    Entry(
        "aspects-classical", "Diversity and fairness rerankers (LLM4Rerank's protocol)",
        "Results: beyond accuracy",
        [f"recfunnel diagnose --config configs/aspects.toml --pipelines {ASPECTS_CLASSICAL} "
         "--users 610 --out out/aspects-classical"],
        "out/aspects-classical/diagnosis.json", DIAG, SAME, "3 min",
    ),
    Entry(
        "aspects-llm", "The LLM's goal-driven walk (LLM4Rerank's protocol, 30 users)",
        "Results: beyond accuracy",
        ["recfunnel diagnose --config configs/aspects.toml --out out/aspects"],
        "out/aspects/diagnosis.json", DIAG, SAME, "100 min from an empty answer cache",
    ),
    Entry(
        "finetuned", "Zero-shot vs SFT vs SFT + DPO (leave-last-out)",
        "Results: fine-tuned reranker",
        ["recfunnel train --config configs/train-reranker.toml --lists 32",
         "recfunnel diagnose --config configs/finetuned.toml --out out/finetuned"],
        "out/finetuned/diagnosis.json", DIAG, TRAINED,
        "55 min (training 30 min in float32 on an AVX2-only CPU)",
    ),
    Entry(
        "finetuned-cold-start", "Fine-tuned reranker for cold-start users",
        "Results: fine-tuned reranker for cold-start users",
        ["recfunnel train --config configs/train-cold-start.toml",
         "recfunnel train --config configs/train-cold-start-listwise.toml",
         "recfunnel diagnose --config configs/finetuned-cold-start.toml "
         "--out out/finetuned-cold-start"],
        "out/finetuned-cold-start/diagnosis.json", DIAG, TRAINED,
        "about 3 h (training 85 min with bf16, diagnosis 100 min); about 4 h in float32",
    ),
    Entry(
        "listwise", "Listwise SFT of the verbalizer",
        "Results: fine-tuned reranker for cold-start users",
        ["recfunnel train --config configs/train-cold-start-listwise.toml",
         "recfunnel diagnose --config configs/finetuned-cold-start-listwise.toml "
         "--out out/listwise"],
        "out/listwise/diagnosis.json", DIAG, TRAINED, "70 min (training 45 min)",
    ),
    Entry(
        "headroom", "How much any reordering of popularity's top 20 could gain",
        "Results: fine-tuned reranker for cold-start users",
        ["python benchmarks/rerank_headroom.py --json out/headroom.json"],
        "out/headroom.json", "json", SAME, "2 min",
    ),
    Entry(
        "soak", "Ten minutes of mixed traffic with the LLM server stopped twice",
        "Results: serving under a soak",
        ["python benchmarks/soak.py --minutes 10 --json out/soak.json"],
        "out/soak.json", "json", SPEED, "12 min", speed=True,
    ),
    Entry(
        "eval-chat", "Simulated conversations",
        "Results: simulated conversations",
        ["recfunnel eval-chat --config configs/serve-llm.toml --users 50 --seeds 3 --turns 6 "
         "--json out/eval-chat.json"],
        "out/eval-chat.json", "json", SAME, "15 min from an empty answer cache",
    ),
    Entry(
        "enrich", "The LLM as enhancer: item descriptions",
        "Results: the LLM as enhancer",
        ["recfunnel enrich --dataset ml-latest-small --limit 1000",
         "python benchmarks/enrich_quality.py --limit 1000 --seeds 3 --json out/enrich.json"],
        "out/enrich.json", "json", SAME, "20 min from an empty answer cache",
    ),
]  # fmt: skip


def entry(name: str) -> Entry:
    for e in ENTRIES:
        if e.name == name:
            return e
    raise ConfigError(f"no reproducible table {name!r}; see `recfunnel reproduce --list`")


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

"""``recfunnel eval``: pipelines on a dataset under a protocol, over seeds."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from recfunnel.cli.app import (
    DataDir,
    app,
    console,
    csv,
    metrics_table,
    read_config,
    table_console,
    write_json,
)
from recfunnel.core import progress
from recfunnel.core.config import parse_config
from recfunnel.core.errors import RecfunnelError

TABULAR_SUFFIXES = {".csv", ".tsv", ".tab", ".parquet", ".pq", ".gz", ".bz2", ".xz", ".zst", ".zip"}
LLM_FIELDS = {"backend", "model", "base_url"}

Config = Annotated[Path | None, typer.Option(help="Experiment TOML (see configs/).")]
Dataset = Annotated[
    str | None,
    typer.Option(help="Dataset name (e.g. ml-latest-small) or an interactions CSV/Parquet."),
]
Items = Annotated[Path | None, typer.Option(help="Item catalog file, with --dataset FILE.")]
Pipelines = Annotated[
    str | None, typer.Option(help="Comma-separated pipeline names (built-in or in --config).")
]
Seeds = Annotated[int | None, typer.Option(help="Number of seeds (0..N-1).")]
Users = Annotated[int | None, typer.Option(help="Test users per seed.")]
Backend = Annotated[
    str | None, typer.Option(help="LLM back-end of LLM stages: llamacpp, hf, openai.")
]
Model = Annotated[
    str | None, typer.Option(help="LLM model: smollm2-135m, gemma3-270m, a path, a name.")
]
BaseUrl = Annotated[str | None, typer.Option(help="openai back-end: server URL.")]
Engine = Annotated[str | None, typer.Option(help="Where test users are ranked: local or ray.")]
Address = Annotated[
    str | None, typer.Option(help="ray: cluster address (default: start a local Ray).")
]
Unchecked = Annotated[
    bool,
    typer.Option("--allow-unchecked-adapters",
                 help="Evaluate LoRA adapters without a training record (unchecked for leakage)."),
]  # fmt: skip


def experiment_config(
    config: Path | None,
    *,
    dataset: str | None = None,
    items: Path | None = None,
    protocol: str | None = None,
    pipelines: str | None = None,
    seeds: int | None = None,
    users: int | None = None,
    history: int | None = None,
    metrics: str | None = None,
    data_dir: Path | None = None,
    engine: str | None = None,
    address: str | None = None,
    allow_unchecked: bool = False,
    cls: Any = None,
    ignore_diagnose: bool = False,
) -> Any:
    """The TOML config (if any) with command-line options laid over it; ``pipelines``
    picks pipelines of the file (or built-in ones) by name, in that order. Paths in the
    file's ``[dataset]`` table are read relative to the file's folder. ``ignore_diagnose``
    (eval): a ``[diagnose]`` table is dropped with a one-line note, so one file serves both
    commands."""
    from recfunnel.evaluate.config import ExperimentConfig

    raw: dict[str, Any] = read_config(config) if config is not None else {}
    source = str(config) if config is not None else "(command line)"
    if ignore_diagnose and "diagnose" in raw:
        raw.pop("diagnose")
        note = (
            f"note: {source}: its [diagnose] table is read by `recfunnel diagnose`; eval ignores it"
        )
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    if config is not None and isinstance(raw.get("dataset"), dict):
        raw["dataset"] = relative_to(config, raw["dataset"])
    if items is not None and not (dataset and Path(dataset).suffix.lower() in TABULAR_SUFFIXES):
        raise RecfunnelError(
            "--items: a catalog file goes with --dataset FILE (an interactions file); "
            + (f"{dataset!r} is a named dataset with its own catalog" if dataset
               else "no --dataset FILE was given")
        )  # fmt: skip
    if dataset and Path(dataset).suffix.lower() in TABULAR_SUFFIXES:
        raw["dataset"] = {"interactions": dataset, "items": str(items) if items else None}
    elif dataset:
        raw["dataset"] = dataset
    if data_dir:
        raw["data_dir"] = str(data_dir)
    proto = dict(raw.get("protocol", {}))
    if protocol and proto.get("name") != protocol:
        proto = {"name": protocol}
    proto.setdefault("name", "cold-start")
    if users is not None:
        proto["n_users"] = users
    if history is not None:
        proto["history"] = history
    raw["protocol"] = proto
    if seeds is not None:
        raw["seeds"] = seeds
    if metrics:
        raw["metrics"] = csv(metrics)
    if pipelines is not None and not csv(pipelines):
        raise RecfunnelError(f"--pipelines {pipelines!r} names no pipeline: give comma-separated "
                             "names, or leave the option out")  # fmt: skip
    if pipelines:
        chosen = csv(pipelines) or []
        if "diagnose" in raw:  # a diagnosis keeps its baseline and drops what it loses
            chosen = keep_for_diagnosis(raw["diagnose"], chosen)
        defined = {p["name"]: p for p in raw.get("pipelines", []) if isinstance(p, dict)}
        raw["pipelines"] = [defined.get(name, name) for name in chosen]
    raw.setdefault("pipelines", ["popularity", "cf", "content", "hybrid"])
    if engine or address:
        raw["engine"] = {**raw.get("engine", {}), **({"kind": engine} if engine else {}),
                         **({"address": address} if address else {})}  # fmt: skip
    if allow_unchecked:
        raw["allow_unchecked_adapters"] = True
    return parse_config(raw, cls or ExperimentConfig, source)


DATASET_PATHS = ("interactions", "items")


def relative_to(config: Path, table: dict[str, Any]) -> dict[str, Any]:
    """``[dataset]`` with its relative file paths resolved against the config file's folder
    (a path found only from the current folder is kept as it is, as before)."""
    out = dict(table)
    for key in DATASET_PATHS:
        value = out.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            beside = config.parent / value
            if beside.exists() or not Path(value).exists():
                out[key] = str(beside)
    return out


def keep_for_diagnosis(section: dict[str, Any], chosen: list[str]) -> list[str]:
    """``chosen`` plus the baseline every test compares with; comparisons and the sweep of
    pipelines not chosen are dropped from ``section``."""
    baseline = section.get("baseline", "popularity")
    chosen = chosen if baseline in chosen else [baseline, *chosen]
    section["compare"] = [p for p in section.get("compare", []) if set(p) <= set(chosen)]
    if section.get("sweep", {}).get("pipeline") not in chosen:
        section.pop("sweep", None)
    return chosen


def llm_overrides(cfg: Any, **overrides: Any) -> Any:
    """Lay command-line LLM options over every LLM stage of the chosen pipelines."""
    from recfunnel.stages.registry import stage_class

    llm_set = {k: v for k, v in overrides.items() if k in LLM_FIELDS and v is not None}
    stage_set = {k: v for k, v in overrides.items() if k not in LLM_FIELDS and v is not None}
    if not llm_set and not stage_set:
        return cfg
    data = cfg.model_dump()
    used: set[str] = set()
    llm_stages = 0

    def lay_over(pipe: dict[str, Any]) -> None:
        if pipe.get("route"):
            for side in ("cold", "warm"):
                lay_over(pipe["route"][side])
            return
        for stage in pipe["stages"]:
            cls = stage_class(stage["kind"])
            if not cls.uses_llm or "llm" not in stage:
                continue
            mine = {k: v for k, v in stage_set.items() if k in cls.config_class.model_fields}
            stage.update(mine)
            stage["llm"].update(llm_set)
            used.update(mine)
            nonlocal llm_stages
            llm_stages += 1

    for pipe in data["pipelines"]:
        lay_over(pipe)
    if llm_set and not llm_stages:
        opts = ", ".join("--" + k.replace("_", "-") for k in LLM_FIELDS if k in llm_set)
        raise RecfunnelError(f"{opts}: no LLM stage of the chosen pipelines takes it")
    if unused := sorted(set(stage_set) - used):
        opts = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise RecfunnelError(f"{opts}: no LLM stage of the chosen pipelines takes it")
    return parse_config(data, type(cfg), "(command-line LLM options)")


def bucket_table(table: dict[str, Any], metric: str = "ndcg@10") -> Table:
    buckets = table["buckets"]
    names = list(buckets)
    cols = list(next(iter(buckets.values())))
    t = Table(title=f"{metric} by history length (winner in bold)")
    t.add_column("pipeline", style="bold")
    for b in cols:
        t.add_column(f"{b} (n={int(buckets[names[0]][b]['n'])})", justify="right")
    for name in names:
        cells = []
        for b in cols:
            v = buckets[name][b][metric]
            win = table["winner"].get(metric, {}).get(b) == name
            cells.append("–" if v != v else (f"[bold]{v:.3f}[/]" if win else f"{v:.3f}"))
        t.add_row(name, *cells)
    return t


def new_items_table(result: Any) -> Table | None:
    """The temporal protocol's new items, per pipeline: their share of the truth and the
    recall@k over the new truth items only (means ± std over seeds); None elsewhere."""
    summary = result.summary()
    first: dict[str, tuple[float, float]] = next(iter(summary.values()), {})
    cols = [m for m in first if m.startswith("new_recall@")]
    if "new_item_share" not in first:
        return None
    share, users = first["new_item_share"][0], first["new_truth_users"][0]
    t = Table(title=f"new items (first seen at or after the cutoff): {share:.1%} of the truth, "
                    f"{users:.0f} test users with one (mean per seed)")  # fmt: skip
    t.add_column("pipeline", style="bold")
    for m in cols:
        t.add_column(m, justify="right")
    for name, stats in summary.items():
        t.add_row(name, *(f"{stats[m][0]:.3f}±{stats[m][1]:.3f}" for m in cols))
    return t


@app.command("eval")
def eval_cmd(
    config: Config = None,
    dataset: Dataset = None,
    items: Items = None,
    protocol: Annotated[
        str | None, typer.Option(help="cold-start, leave-last-out or temporal.")
    ] = None,
    pipelines: Pipelines = None,
    seeds: Seeds = None,
    users: Users = None,
    history: Annotated[int | None, typer.Option(help="cold-start: history items kept.")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated, e.g. hr@10,ndcg@10.")
    ] = None,
    data_dir: DataDir = None,
    backend: Backend = None,
    model: Model = None,
    base_url: BaseUrl = None,
    top_n: Annotated[int | None, typer.Option(help="Candidates each LLM stage reads.")] = None,
    shuffles: Annotated[
        int | None, typer.Option(help="Candidate orders per user (position-bias bootstrap).")
    ] = None,
    blend: Annotated[
        float | None, typer.Option(help="Weight of the previous stage in the final score.")
    ] = None,
    show_prev_rank: Annotated[
        bool | None, typer.Option(help="Show each candidate's ranker rank in the prompt.")
    ] = None,
    goal: Annotated[
        str | None,
        typer.Option(
            help="Goal-driven stages: accuracy, accuracy+diversity, accuracy+fairness"
            ", or a sentence."
        ),
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write results JSON to this path ('-': stdout).")
    ] = None,
    by_history: Annotated[
        bool,
        typer.Option(
            help="Also print metrics by history-length bucket and the winners (temporal: "
            "by user state, new to 21+, and the new items' share and recall)."
        ),
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of NDCG@10 by history-length bucket.")
    ] = None,
    engine: Engine = None,
    address: Address = None,
    allow_unchecked_adapters: Unchecked = False,
    allow_fallback: Annotated[
        bool,
        typer.Option(
            "--allow-fallback",
            help="Exit 0 even when an LLM stage answered no row (its rows then "
            "keep the previous stage's order).",
        ),
    ] = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Evaluate pipelines on a dataset under a protocol, over seeds.

    A run in which an LLM stage answered no row (its back-end down, say) exits with
    status 1 and one line naming the stage and the cause, unless --allow-fallback; rows
    whose LLM stage fell back are marked in the table."""
    from recfunnel.cli.fallback import digest_llm_warnings, llm_fallbacks
    from recfunnel.evaluate.runner import run_experiment

    cfg = experiment_config(
        config, dataset=dataset, items=items, protocol=protocol, pipelines=pipelines,
        seeds=seeds, users=users, history=history, metrics=metrics, data_dir=data_dir,
        engine=engine, address=address, allow_unchecked=allow_unchecked_adapters,
        ignore_diagnose=True,
    )  # fmt: skip
    cfg = llm_overrides(
        cfg, backend=backend, model=model, base_url=base_url, top_n=top_n, shuffles=shuffles,
        blend=blend, show_prev_rank=show_prev_rank, goal=goal,
    )  # fmt: skip
    data = cfg.load_data()
    with progress.bar(len(cfg.seeds) * len(cfg.pipelines), "evaluating") as bar:

        def step(label: str) -> None:
            bar.set_description(label)
            bar.update()

        with digest_llm_warnings(not verbose) as digest:
            result = run_experiment(cfg, dataset=data, on_step=step)
    fallbacks = llm_fallbacks(result)
    if not quiet:
        out = table_console(json_out == "-")
        out.print(metrics_table(result, cfg.metrics, fallbacks))
        if by_history:
            out.print(bucket_table(result.by_history()))
            if (fresh := new_items_table(result)) is not None:
                out.print(fresh)
    for line in digest.lines():
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if plot is not None:
        from recfunnel.evaluate.report import plot_buckets

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(plot_buckets(result.by_history()))
    if json_out:
        write_json(result.to_json(), json_out, quiet)
    dead = [f for f in fallbacks if f.answered_none]
    if dead and not allow_fallback:
        f = dead[0]
        cause = digest.stages.get(f.stage)
        why = cause.cause if cause and cause.cause else "its back-end gave no usable answer"
        more = f" (and {len(dead) - 1} more LLM stage(s))" if len(dead) > 1 else ""
        console.print(
            f"[bold red]error:[/] {escape(f.pipeline)}: LLM stage {escape(f.stage)!r} answered "
            f"no row ({escape(why)}){escape(more)}; its row is the previous stage's order. "
            f"Start the LLM server or pass --allow-fallback",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)

"""``recfunnel`` command line: ``eval``, ``diagnose``, ``enrich``, ``train``, ``serve``,
``eval-chat`` and ``data list|info|fetch``.

Errors of recfunnel's own (bad config, missing dataset, unknown name) print one clear
message and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recfunnel.errors import RecfunnelError

app = typer.Typer(
    help="recfunnel: retrieval → ranker → LLM reranker, every stage measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="List, inspect and download datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

TABULAR_SUFFIXES = {".csv", ".tsv", ".tab", ".parquet", ".pq", ".gz"}

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder holding dataset folders (else $RECFUNNEL_DATA)."),
]


def _fail(exc: RecfunnelError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(2)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _experiment_config(
    config: Path | None,
    dataset: str | None,
    protocol: str | None,
    pipelines: str | None,
    seeds: int | None,
    users: int | None,
    history: int | None,
    metrics: str | None,
    data_dir: Path | None,
    items: Path | None = None,
    cls: Any = None,
    engine: str | None = None,
    address: str | None = None,
) -> Any:
    """The TOML config (if any) with command-line options laid over it."""
    import tomllib

    from recfunnel.config import parse_config

    raw: dict[str, Any] = {}
    source = "(command line)"
    if config is not None:
        if not config.is_file():
            raise RecfunnelError(f"config file {config} does not exist")
        raw = tomllib.loads(config.read_text())
        source = str(config)
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
        raw["metrics"] = _csv(metrics)
    if pipelines:
        chosen = _csv(pipelines) or []
        defined = {p["name"]: p for p in raw.get("pipelines", []) if isinstance(p, dict)}
        raw["pipelines"] = [defined.get(name, name) for name in chosen]
    raw.setdefault("pipelines", ["popularity", "cf", "content", "hybrid"])
    if engine or address:
        raw["engine"] = {**raw.get("engine", {}), **({"kind": engine} if engine else {}),
                         **({"address": address} if address else {})}  # fmt: skip
    if cls is None:
        return parse_config(raw, source)
    return parse_config(raw, source, cls)


def _llm_overrides(cfg: Any, **overrides: Any) -> Any:
    """Lay command-line LLM options over every rerank stage of the chosen pipelines."""
    llm_keys = {"backend", "model", "base_url"}
    llm_set = {k: v for k, v in overrides.items() if k in llm_keys and v is not None}
    stage_set = {k: v for k, v in overrides.items() if k not in llm_keys and v is not None}
    if not llm_set and not stage_set:
        return cfg
    data = cfg.model_dump()

    from recfunnel.rerank.goal import GoalConfig
    from recfunnel.rerank.llm import RerankConfig

    used: set[str] = set()

    def lay_over(pipe: dict[str, Any]) -> None:
        if pipe.get("route"):
            for side in ("cold", "warm"):
                lay_over(pipe["route"][side])
        elif pipe.get("rerank") and "llm" in pipe["rerank"]:  # LLM stages only
            stage = pipe["rerank"]
            fields = (GoalConfig if stage.get("method") == "goal" else RerankConfig).model_fields
            mine = {k: v for k, v in stage_set.items() if k in fields}
            stage.update(mine)
            stage["llm"].update(llm_set)
            used.update(mine)

    for pipe in data["pipelines"]:
        lay_over(pipe)
    if unused := sorted(set(stage_set) - used):
        opts = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise RecfunnelError(f"{opts}: no LLM stage of the chosen pipelines takes it")
    try:
        return type(cfg).model_validate(data)
    except Exception as exc:  # pydantic's message names the field
        raise RecfunnelError(f"bad LLM option: {exc}") from None


def _table(result: Any, metrics: list[str]) -> Table:
    table = Table(title=f"{result.dataset} · {result.protocol} · seeds {result.seeds}")
    table.add_column("pipeline", style="bold")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, stats in result.summary().items():
        cells = []
        for m in metrics:
            mean, std = stats[m]
            cells.append(f"{mean:.0f}±{std:.0f}" if mean >= 100 else f"{mean:.3f}±{std:.3f}")
        table.add_row(name, *cells)
    return table


def _bucket_table(table: dict[str, Any], metric: str = "ndcg@10") -> Table:
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


@app.command("eval")
def eval_cmd(
    config: Annotated[Path | None, typer.Option(help="Experiment TOML (see configs/).")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset name (e.g. ml-latest-small) or an interactions CSV/Parquet."),
    ] = None,
    items: Annotated[
        Path | None, typer.Option(help="Item catalog file, with --dataset FILE.")
    ] = None,
    protocol: Annotated[str | None, typer.Option(help="cold-start or leave-last-out.")] = None,
    pipelines: Annotated[
        str | None, typer.Option(help="Comma-separated pipeline names (built-in or in --config).")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Number of seeds (0..N-1).")] = None,
    users: Annotated[int | None, typer.Option(help="Test users per seed.")] = None,
    history: Annotated[int | None, typer.Option(help="cold-start: history items kept.")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated, e.g. hr@10,ndcg@10.")
    ] = None,
    data_dir: DataDir = None,
    backend: Annotated[
        str | None, typer.Option(help="LLM back-end for rerank stages: llamacpp, hf, openai.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="LLM model: smollm2-135m, gemma3-270m, a path, a name.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="openai back-end: server URL.")] = None,
    top_n: Annotated[int | None, typer.Option(help="Candidates each LLM stage reranks.")] = None,
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
            help="Goal-driven stages: accuracy, accuracy+diversity, accuracy+fairness, or a "
            "sentence."
        ),
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write results JSON to this path ('-': stdout).")
    ] = None,
    by_history: Annotated[
        bool, typer.Option(help="Also print metrics by history-length bucket and the winners.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of NDCG@10 by history-length bucket.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar or table.")] = False,
    engine: Annotated[
        str | None, typer.Option(help="Where test users are ranked: local or ray.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="ray: cluster address (default: start a local Ray).")
    ] = None,
) -> None:
    """Evaluate pipelines on a dataset under a protocol, over seeds."""
    from recfunnel.evaluate.runner import load_experiment_data, run_experiment

    try:
        cfg = _experiment_config(
            config, dataset, protocol, pipelines, seeds, users, history, metrics, data_dir, items,
            engine=engine, address=address,
        )  # fmt: skip
        cfg = _llm_overrides(
            cfg, backend=backend, model=model, base_url=base_url, top_n=top_n,
            shuffles=shuffles, blend=blend, show_prev_rank=show_prev_rank, goal=goal,
        )  # fmt: skip
        data = load_experiment_data(cfg)
        total = len(cfg.seeds) * len(cfg.pipelines)
        with _progress(quiet) as progress:
            task = progress.add_task("evaluating", total=total)

            def step(label: str) -> None:
                progress.update(task, advance=1, description=label)

            result = run_experiment(cfg, dataset=data, on_step=step)
    except RecfunnelError as exc:
        raise _fail(exc) from None
    if not quiet:  # the table is the result: stdout, unless stdout carries the JSON
        out = Console(stderr=json_out == "-", width=None if sys.stdout.isatty() else 220)
        out.print(_table(result, cfg.metrics))
        if by_history:
            out.print(_bucket_table(result.by_history()))
    if plot is not None:
        from recfunnel.evaluate.report import plot_buckets

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(plot_buckets(result.by_history()))
    if json_out:
        payload = json.dumps(result.to_json(), indent=2, allow_nan=False)
        if json_out == "-":
            sys.stdout.write(payload + "\n")
        else:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(payload)
            if not quiet:
                console.print(f"wrote {json_out}")


@app.command("diagnose")
def diagnose_cmd(
    config: Annotated[
        Path, typer.Option(help="Diagnosis TOML (see configs/diagnose-cold-start.toml).")
    ] = Path("configs/diagnose-cold-start.toml"),
    out: Annotated[Path, typer.Option(help="Report folder (index.html, diagnosis.json).")] = Path(
        "report"
    ),
    dataset: Annotated[str | None, typer.Option(help="Dataset name or interactions file.")] = None,
    items: Annotated[Path | None, typer.Option(help="Item catalog, with --dataset FILE.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Number of seeds (0..N-1).")] = None,
    users: Annotated[int | None, typer.Option(help="Test users per seed.")] = None,
    data_dir: DataDir = None,
    backend: Annotated[str | None, typer.Option(help="LLM back-end: llamacpp, hf, openai.")] = None,
    model: Annotated[str | None, typer.Option(help="LLM model name or path.")] = None,
    base_url: Annotated[str | None, typer.Option(help="openai back-end: server URL.")] = None,
    render_only: Annotated[
        bool, typer.Option(help="Redraw index.html from OUT/diagnosis.json; run nothing.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    engine: Annotated[
        str | None, typer.Option(help="Where test users are ranked: local or ray.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="ray: cluster address (default: start a local Ray).")
    ] = None,
) -> None:
    """Diagnose every stage (coverage, exposure, discrimination, position bias, validity,
    cost), test each pipeline against the baseline, sweep the pool size; write a report."""
    from recfunnel.config import DiagnoseConfig

    json_path = out / "diagnosis.json"
    try:
        if render_only:
            if not json_path.is_file():
                raise RecfunnelError(f"--render-only: {json_path} does not exist")
            diagnosis = json.loads(json_path.read_text())
        else:
            diagnosis = _run_diagnosis(
                _llm_overrides(
                    _experiment_config(
                        config, dataset, None, None, seeds, users, None, None, data_dir, items,
                        DiagnoseConfig, engine, address,
                    ),
                    backend=backend, model=model, base_url=base_url,
                ),
                quiet,
            )  # fmt: skip
            out.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(diagnosis, indent=1))
        from recfunnel.evaluate.report import write_report  # matplotlib: loaded only here

        index = write_report(diagnosis, out)
    except RecfunnelError as exc:
        raise _fail(exc) from None
    if not quiet:
        console.print(f"wrote {index} and {json_path}")


def _progress(quiet: bool) -> Progress:
    """The one progress bar style of long commands (label, bar, n of m, elapsed)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )


def _run_diagnosis(cfg: Any, quiet: bool) -> dict[str, Any]:
    from recfunnel.evaluate.diagnose import run_diagnosis
    from recfunnel.evaluate.runner import load_experiment_data

    data = load_experiment_data(cfg)
    sweep = cfg.diagnose.sweep
    total = len(cfg.seeds) * len(cfg.pipelines) + (len(sweep.pool_sizes) if sweep else 0)
    with _progress(quiet) as progress:
        task = progress.add_task("diagnosing", total=total)
        return run_diagnosis(
            cfg,
            dataset=data,
            on_step=lambda label: progress.update(task, advance=1, description=label),
        )


@app.command("enrich")
def enrich_cmd(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "ml-latest-small",
    limit: Annotated[
        int | None, typer.Option(help="Describe only the N most popular items.")
    ] = None,
    backend: Annotated[str, typer.Option(help="LLM back-end: llamacpp, hf, openai.")] = "llamacpp",
    model: Annotated[str, typer.Option(help="LLM model alias, path or server name.")] = (
        "smollm2-135m"
    ),
    base_url: Annotated[str | None, typer.Option(help="openai back-end: server URL.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write descriptions as JSON lines.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Have the LLM describe each item (genre, tone, themes, audience), cached per item and
    model; `content` retrievers with an `enrich` table then embed the enriched text."""
    from recfunnel.data.registry import load_dataset
    from recfunnel.enrich import describe_items, pick_items
    from recfunnel.llm import build_llm
    from recfunnel.llm.base import LLMConfig

    try:
        data = load_dataset(dataset, data_dir)
        extra = {"base_url": base_url} if base_url else {}
        cfg = LLMConfig.model_validate(
            {"backend": backend, "model": model, "repeat_penalty": 1.3, **extra}
        )
        llm = build_llm(cfg)
        items = pick_items(data.catalog, data.interactions, limit)
        texts = describe_items(data.catalog, llm, items)
    except RecfunnelError as exc:
        raise _fail(exc) from None
    u = llm.usage
    console.print(
        f"described {len(items)} items: {u.calls - u.cache_hits} generated, "
        f"{u.cache_hits} from cache, {u.completion_tokens} tokens, {u.seconds:.1f}s"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        ids = data.catalog.ids_of(items)
        with out.open("w") as f:
            for i, item_id, text in zip(items, ids, texts, strict=True):
                row = {"item_id": item_id, "title": data.catalog.titles[i], "description": text}
                f.write(json.dumps(row, default=str) + "\n")
        console.print(f"wrote {out}")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option(help="Training config (TOML).")] = Path(
        "configs/train-reranker.toml"
    ),
    out: Annotated[Path | None, typer.Option(help="Adapter folder (overrides `out`).")] = None,
    lists: Annotated[int | None, typer.Option(help="Training lists (overrides).")] = None,
    no_dpo: Annotated[bool, typer.Option("--no-dpo", help="SFT only.")] = False,
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fine-tune the verbalizer reranker: SFT then DPO on LoRA adapters (TRL + PEFT) over
    shuffled training lists; writes <out>/sft, <out>/sft+dpo and <out>/train.json."""
    from recfunnel.config import load_config
    from recfunnel.train.tune import TrainConfig, train

    try:
        cfg = load_config(config, TrainConfig)
        update: dict[str, Any] = {}
        if out is not None:
            update["out"] = str(out)
        if data_dir is not None:
            update["data_dir"] = str(data_dir)
        if no_dpo:
            update["dpo"] = None
        if lists is not None:
            update["examples"] = cfg.examples.model_copy(update={"lists": lists})
        cfg = cfg.model_copy(update=update)
        summary = train(cfg)
    except RecfunnelError as exc:
        raise _fail(exc) from None
    if json_out:
        print(json.dumps(summary, indent=1))
        return
    console.print(f"{summary['examples']} examples ({summary['lists']} lists) in "
                  f"{summary['examples_s']:.0f} s; {summary['threads']} threads")  # fmt: skip
    for stage in ("sft", "dpo"):
        if stage in summary:
            loss = summary[stage]["loss"]
            console.print(f"{stage}: {summary[stage]['steps']} steps in "
                          f"{summary[stage]['seconds']:.0f} s, loss {loss[0]:.3f} → "
                          f"{loss[-1]:.3f}")  # fmt: skip
    console.print(f"wrote {cfg.out}/sft{', ' + cfg.out + '/sft+dpo' if cfg.dpo else ''}, "
                  f"{cfg.out}/train.json")  # fmt: skip


def _need_serve() -> None:
    """The serve extra's packages, or a message saying how to get them."""
    import importlib

    for module in ("fastapi", "uvicorn", "prometheus_client", "limits", "pybreaker"):
        try:
            importlib.import_module(module)
        except ImportError:
            msg = f"{module!r} is needed: pip install 'recfunnel[serve]'"
            raise _fail(RecfunnelError(msg)) from None


def _serve_config(config: Path | None, data_dir: Path | None, **over: Any) -> Any:
    """The serve config (file or embedded defaults) with command-line options laid over."""
    from recfunnel.config import load_config, parse_config
    from recfunnel.serve.config import ServeConfig

    cfg = load_config(config, ServeConfig) if config is not None else ServeConfig()
    update = {k: v for k, v in over.items() if v is not None}
    if data_dir is not None:
        update["data_dir"] = str(data_dir)
    if str(update.get("rate_limit", "")).lower() in ("off", "none"):
        update["rate_limit"] = None
    if not update:
        return cfg
    return parse_config({**cfg.model_dump(), **update}, "(command line)", ServeConfig)


@app.command("serve")
def serve_cmd(
    config: Annotated[
        Path | None, typer.Option(help="Serve config (TOML); none: the embedded defaults.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    budget_ms: Annotated[float | None, typer.Option(help="Latency budget (ms).")] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Per-client limit, e.g. 600/minute; 'off': none.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve the funnel over HTTP: /recommend, /chat, /items/search, /healthz, /metrics,
    and the demo page at /. Set $RECFUNNEL_API_KEY to require a bearer token."""
    _need_serve()
    import uvicorn

    from recfunnel.serve.app import create_app
    from recfunnel.serve.service import Service

    try:
        cfg = _serve_config(config, data_dir, budget_ms=budget_ms, rate_limit=rate_limit)
        with console.status("fitting the pipeline and loading the models…"):
            service = Service(cfg)
    except RecfunnelError as exc:
        raise _fail(exc) from None
    console.print(f"serving {cfg.pipeline.name} on {cfg.dataset} at http://{host}:{port}/ "
                  f"(fitted in {service.fit_seconds:.1f} s)")  # fmt: skip
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning", access_log=False)


@app.command("eval-chat")
def eval_chat_cmd(
    config: Annotated[
        Path | None, typer.Option(help="Serve config (TOML); none: the embedded defaults.")
    ] = None,
    users: Annotated[int, typer.Option(help="Simulated users per seed.", min=1)] = 50,
    turns: Annotated[int, typer.Option(help="Turn limit per session.", min=1)] = 6,
    seeds: Annotated[int, typer.Option(help="Seeds (splits).", min=1)] = 1,
    policies: Annotated[str, typer.Option(help="Comma-separated: llm, rules.")] = "llm,rules",
    truth: Annotated[
        int, typer.Option(help="A user accepts only its next N relevant items (0: all).", min=0)
    ] = 10,
    data_dir: DataDir = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Simulated cold-start users talk to the chat: acceptance, turns, hallucinations,
    diversity, for the LLM choosing the chat's actions vs the fixed rules."""
    _need_serve()
    from recfunnel.evaluate.chat_sim import eval_chat, progress

    chosen = _csv(policies) or []
    if bad := [p for p in chosen if p not in ("llm", "rules")]:
        raise _fail(RecfunnelError(f"--policies: unknown {bad}; use llm and/or rules"))
    try:
        cfg = _serve_config(config, data_dir)
        bar = progress(users * seeds * len(chosen))
        with bar:
            out = eval_chat(cfg, users=users, turns=turns, seeds=list(range(seeds)),
                            policies=chosen,  # type: ignore[arg-type]
                            truth_items=truth or None, on_session=lambda: bar.update())  # fmt: skip
    except RecfunnelError as exc:
        raise _fail(exc) from None
    table = Table(title=f"chat: {users} simulated users × {seeds} seed(s), ≤ {turns} turns")
    rows = ["acceptance_rate", "turns_to_accept", "questions_per_session",
            "items_shown_per_session", "hallucination_rate", "ild_per_session", "fallback_rate",
            "llm_decided_rate"]  # fmt: skip
    table.add_column("measure")
    for p in out["policies"]:
        table.add_column(p, justify="right")
    for r in rows:
        vals = [out["policies"][p][r] for p in out["policies"]]
        table.add_row(r, *("—" if v is None else f"{v:.3f}" for v in vals))
    Console().print(table)
    if json_path is not None:
        from recfunnel.evaluate.runner import json_safe

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(json_safe(out), indent=1))
        console.print(f"wrote {json_path}")


@data_app.command("list")
def data_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Datasets recfunnel knows, where they are expected, and whether they can be fetched."""
    from recfunnel.data.registry import DATASETS

    rows = [
        {
            "name": s.name,
            "folder": s.folder,
            "files": list(s.files),
            "fetch": s.archive.url if s.archive else None,
            "about": s.about,
        }
        for s in DATASETS.values()
    ]
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="datasets")
    for col in ("name", "folder", "fetch", "about"):
        table.add_column(col)
    for r in rows:
        fetchable = "yes" if r["fetch"] else "ships in data dir"
        table.add_row(str(r["name"]), str(r["folder"]), fetchable, str(r["about"]))
    Console().print(table)


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load a dataset and print its size."""
    from recfunnel.data.registry import load_dataset

    try:
        d = load_dataset(name, data_dir)
    except RecfunnelError as exc:
        raise _fail(exc) from None
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
            Console().print(f"{k:>16}: {v}", highlight=False)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="ml-100k, ml-1m, ml-latest-small, serendipity-2018")],
    data_dir: DataDir = None,
    url: Annotated[str | None, typer.Option(help="Download from this URL (a mirror).")] = None,
    force: Annotated[bool, typer.Option(help="Download even if the files are there.")] = False,
) -> None:
    """Download a dataset's original archive from GroupLens, verify it and unpack it."""
    from recfunnel.data.fetch import fetch

    try:
        path = fetch(name, data_dir, url=url, force=force)
    except RecfunnelError as exc:
        raise _fail(exc) from None
    console.print(f"{name} is in {path}")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


if __name__ == "__main__":  # pragma: no cover
    app()

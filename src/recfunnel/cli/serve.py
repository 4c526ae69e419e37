"""``recfunnel serve`` (the HTTP API and demo page) and ``recfunnel eval-chat``."""

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recfunnel.cli.app import DataDir, app, console, csv, table_console
from recfunnel.core.errors import RecfunnelError, require

SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client", "limits", "pybreaker")


def need_serve() -> None:
    """The serve extra's packages, or a message saying how to get them."""
    for module in SERVE_MODULES:
        require(module, "serve", "recfunnel serve")


def serve_config(config: Path | None, data_dir: Path | None, **over: Any) -> Any:
    """The serve config (file or embedded defaults) with command-line options laid over."""
    from recfunnel.core.config import load_config, parse_config
    from recfunnel.serve.config import ServeConfig

    cfg = load_config(config, ServeConfig) if config is not None else ServeConfig()
    update = {k: v for k, v in over.items() if v is not None}
    if data_dir is not None:
        update["data_dir"] = str(data_dir)
    if str(update.get("rate_limit", "")).lower() in ("off", "none"):
        update["rate_limit"] = None
    if not update:
        return cfg
    return parse_config({**cfg.model_dump(), **update}, ServeConfig, "(command line)")


ServeFile = Annotated[
    Path | None, typer.Option(help="Serve config (TOML); none: the embedded defaults.")
]


@app.command("serve")
def serve_cmd(
    config: ServeFile = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    budget_ms: Annotated[float | None, typer.Option(help="Latency budget (ms).")] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Per-client limit, e.g. 600/minute; 'off': none.")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Processes, each with its own fitted pipeline.", min=1)
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(help="Limits and chat sessions: memory:// or redis://host:port/db."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve the funnel over HTTP: /recommend, /chat, /items/search, /healthz, /metrics,
    and the demo page at /. Set $RECFUNNEL_API_KEY to require a bearer token (several:
    comma-separated). Proxy headers count only from the config's trusted_proxies."""
    need_serve()
    cfg = serve_config(config, data_dir, budget_ms=budget_ms, rate_limit=rate_limit,
                       storage=storage)  # fmt: skip
    from recfunnel.serve.access import Keys

    Keys.of(cfg)  # an empty key setting is refused before minutes of fitting
    if workers > 1:
        return serve_workers(cfg, host, port, workers)
    import uvicorn

    from recfunnel.serve.app import create_app
    from recfunnel.serve.service import Service

    with console.status("fitting the pipeline and loading the models…"):
        service = Service(cfg)
    console.print(f"serving {cfg.pipeline.name} on {cfg.dataset} at http://{host}:{port}/ "
                  f"(fitted in {service.fit_seconds:.1f} s)")  # fmt: skip
    uvicorn.run(create_app(service), host=host, port=port, **uvicorn_options(cfg))


UVICORN: dict[str, Any] = {"log_level": "warning", "access_log": False, "proxy_headers": False}
"""uvicorn's own proxy-header handling is off: it believes X-Forwarded-For from loopback;
the app believes it only from the config's ``trusted_proxies``."""


def uvicorn_options(cfg: Any) -> dict[str, Any]:
    """:data:`UVICORN`, the connection limit (503 past it) and the request-head deadline
    (through the environment, so every worker reads it)."""
    from recfunnel.serve.http import HEADER_TIMEOUT_ENV, HeaderDeadline

    os.environ[HEADER_TIMEOUT_ENV] = str(cfg.header_timeout_s)
    return {**UVICORN, "limit_concurrency": cfg.max_connections, "http": HeaderDeadline}


def serve_workers(cfg: Any, host: str, port: int, workers: int) -> None:
    """``workers`` processes on one port, each fitting its own pipeline from the config
    (passed as JSON in the environment); limits and sessions in the shared storage,
    metrics added up across workers."""
    import uvicorn

    from recfunnel.serve.app import CONFIG_ENV
    from recfunnel.serve.metrics import MULTIPROC_ENV

    if cfg.storage.startswith("memory://"):
        raise RecfunnelError(
            f"--workers {workers}: each process would keep its own rate limits and chat "
            "sessions; give --storage redis://host:port/0 (or storage in the config)"
        )
    os.environ[CONFIG_ENV] = cfg.model_dump_json()
    with tempfile.TemporaryDirectory(prefix="recfunnel-metrics-") as fresh:
        os.environ.setdefault(MULTIPROC_ENV, fresh)  # the operator's folder, if set
        console.print(f"serving {cfg.pipeline.name} on {cfg.dataset} at http://{host}:{port}/ "
                      f"with {workers} workers (each fits the pipeline first)")  # fmt: skip
        uvicorn.run("recfunnel.serve.app:app_from_env", factory=True, workers=workers,
                    host=host, port=port, **uvicorn_options(cfg))  # fmt: skip


@app.command("eval-chat")
def eval_chat_cmd(
    config: ServeFile = None,
    users: Annotated[int, typer.Option(help="Simulated users per seed.", min=1)] = 50,
    turns: Annotated[int, typer.Option(help="Turn limit per session.", min=1)] = 6,
    seeds: Annotated[int, typer.Option(help="Seeds (splits).", min=1)] = 1,
    policies: Annotated[str, typer.Option(help="Comma-separated: llm, rules.")] = "llm,rules",
    truth: Annotated[
        int, typer.Option(help="A user accepts only its next N relevant items (0: all).", min=0)
    ] = 10,
    data_dir: DataDir = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    quiet: bool = False,
) -> None:
    """Simulated cold-start users talk to the chat: acceptance, turns, hallucinations,
    diversity, for the LLM choosing the chat's actions vs the fixed rules."""
    need_serve()
    from recfunnel.core.strict_json import json_safe
    from recfunnel.serve.chat_sim import eval_chat, session_bar

    chosen = csv(policies) or []
    if bad := [p for p in chosen if p not in ("llm", "rules")]:
        raise RecfunnelError(f"--policies: unknown {bad}; use llm and/or rules")
    cfg = serve_config(config, data_dir)
    with session_bar(users * seeds * len(chosen)) as bar:
        out = eval_chat(cfg, users=users, turns=turns, seeds=list(range(seeds)),
                        policies=chosen,  # type: ignore[arg-type]
                        truth_items=truth or None, on_session=lambda: bar.update())  # fmt: skip
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
    if not quiet:
        table_console().print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(json_safe(out), indent=1))
        if not quiet:
            console.print(f"wrote {json_path}")

"""``recfunnel enrich``: the LLM describes each item for the content retriever."""

import json
from pathlib import Path
from typing import Annotated

import typer

from recfunnel.cli.app import DataDir, app, console


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
    quiet: bool = False,
) -> None:
    """Have the LLM describe each item (genre, tone, themes, audience), cached per item and
    model; `content` stages with an `enrich` table then embed the enriched text."""
    from recfunnel.data.load import load_dataset
    from recfunnel.llm import LLMConfig, build_llm
    from recfunnel.stages.retrieve.enrich import describe_items, pick_items

    data = load_dataset(dataset, data_dir)
    extra = {"base_url": base_url} if base_url else {}
    cfg = LLMConfig.model_validate(
        {"backend": backend, "model": model, "repeat_penalty": 1.3, **extra}
    )
    llm = build_llm(cfg)
    items = pick_items(data.catalog, data.interactions, limit)
    texts = describe_items(data.catalog, llm, items)
    u = llm.usage
    if not quiet:
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
        if not quiet:
            console.print(f"wrote {out}")

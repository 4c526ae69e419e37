"""``recfunnel diagnose``: every stage measured, every pipeline tested, a report written."""

import json
from pathlib import Path
from typing import Annotated

import typer

from recfunnel.cli.app import DataDir, app, console
from recfunnel.cli.eval import (
    Address,
    Backend,
    BaseUrl,
    Engine,
    Items,
    Model,
    Pipelines,
    Seeds,
    Unchecked,
    Users,
    experiment_config,
    llm_overrides,
)
from recfunnel.core import progress
from recfunnel.core.errors import RecfunnelError


@app.command("diagnose")
def diagnose_cmd(
    config: Annotated[
        Path, typer.Option(help="Diagnosis TOML (see configs/diagnose-cold-start.toml).")
    ] = Path("configs/diagnose-cold-start.toml"),
    out: Annotated[Path, typer.Option(help="Report folder (index.html, diagnosis.json).")] = Path(
        "report"
    ),
    dataset: Annotated[str | None, typer.Option(help="Dataset name or interactions file.")] = None,
    items: Items = None,
    pipelines: Pipelines = None,
    seeds: Seeds = None,
    users: Users = None,
    data_dir: DataDir = None,
    backend: Backend = None,
    model: Model = None,
    base_url: BaseUrl = None,
    render_only: Annotated[
        bool, typer.Option(help="Redraw index.html from OUT/diagnosis.json; run nothing.")
    ] = False,
    engine: Engine = None,
    address: Address = None,
    allow_unchecked_adapters: Unchecked = False,
    quiet: bool = False,
) -> None:
    """Diagnose every stage (coverage, exposure, discrimination, position bias, validity,
    cost), test each pipeline against the baseline, sweep the pool size; write a report.

    With --pipelines, only the named pipelines of the file run (and the baseline)."""
    from recfunnel.evaluate.config import DiagnoseConfig

    json_path = out / "diagnosis.json"
    if render_only:
        if not json_path.is_file():
            raise RecfunnelError(f"--render-only: {json_path} does not exist")
        diagnosis = json.loads(json_path.read_text())
    else:
        cfg = experiment_config(
            config, dataset=dataset, items=items, pipelines=pipelines,
            seeds=seeds, users=users, data_dir=data_dir, engine=engine, address=address,
            allow_unchecked=allow_unchecked_adapters, cls=DiagnoseConfig,
        )  # fmt: skip
        cfg = llm_overrides(cfg, backend=backend, model=model, base_url=base_url)
        from recfunnel.evaluate.diagnose import diagnose

        data = cfg.load_data()
        sweep = cfg.diagnose.sweep
        total = len(cfg.seeds) * len(cfg.pipelines) + (len(sweep.pool_sizes) if sweep else 0)
        with progress.bar(total, "diagnosing") as bar:

            def step(label: str) -> None:
                bar.set_description(label)
                bar.update()

            diagnosis = diagnose(cfg, dataset=data, on_step=step)
        out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(diagnosis, indent=1))
    from recfunnel.evaluate.report import write_report  # matplotlib: loaded only here

    index = write_report(diagnosis, out)
    if not quiet:
        console.print(f"wrote {index} and {json_path}")

"""``recfunnel train``: fine-tune the verbalizer reranker (SFT, then DPO) on LoRA adapters."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from recfunnel.cli.app import DataDir, app, console


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
    from recfunnel.cli.app import read_config
    from recfunnel.core.config import parse_config
    from recfunnel.train.config import TrainConfig
    from recfunnel.train.finetune import train

    cfg = parse_config(read_config(config), TrainConfig, str(config))
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

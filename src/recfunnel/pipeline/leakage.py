"""Is an adapter about to be scored on data it trained on?

``recfunnel train`` writes ``train.json`` beside its adapters: the dataset, the protocol
its lists came from and the evaluation seeds whose held-out users it never used. An
evaluation that uses the adapter on another protocol, another validation set or a seed
outside that list could score the model on its own training targets, and the numbers
would look better than they are; such a run is refused before any work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from recfunnel.core.config import find_all
from recfunnel.core.errors import ConfigError
from recfunnel.data.splits import ProtocolConfig
from recfunnel.llm.base import LLMConfig

UNCHECKED_FLAG = "--allow-unchecked-adapters"


def adapters(model: BaseModel) -> Iterator[str]:
    """Every LoRA adapter an (experiment, pipeline, …) config will load."""
    for llm in find_all(model, LLMConfig):
        if llm.adapter is not None:
            yield llm.adapter


def leak(adapter: str, dataset: str, protocol: BaseModel, seeds: Sequence[int],
         allow_unchecked: bool = False) -> str | None:  # fmt: skip
    """Why evaluating ``adapter`` on ``protocol`` × ``seeds`` of ``dataset`` could meet its
    training data, or None. What cannot be checked is refused: an adapter without a
    training record passes only with ``allow_unchecked`` (the user's explicit word); one
    trained on another dataset cannot hold this dataset's users."""
    record = Path(adapter).expanduser().parent / "train.json"
    if not record.is_file():
        if allow_unchecked:
            return None
        return (
            f"adapter {adapter} has no training record ({record} is missing), so its training "
            "data cannot be checked against this evaluation's held-out users. Evaluate it "
            f"anyway with {UNCHECKED_FLAG} (allow_unchecked_adapters = true)"
        )
    try:
        cfg: dict[str, Any] = json.loads(record.read_text())["config"]
        if cfg["dataset"] != dataset:
            return None
        # records older than these fields: leave-last-out, the same held-out items per seed
        raw = cfg.get("protocol", {"name": "leave-last-out"})
        trained = TypeAdapter(ProtocolConfig).validate_python(raw).model_dump()
        covered = set(cfg.get("eval_seeds", seeds)) | {cfg["seed"]}
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ConfigError(f"unreadable training record {record}: {exc}") from None
    wanted = protocol.model_dump()
    if trained != wanted:
        diff = {k: (trained.get(k), v) for k, v in wanted.items() if trained.get(k) != v}
        return (
            f"adapter {adapter} was trained on another split of {dataset} "
            f"(protocol field: (trained, evaluated) = {diff}); its training lists may hold "
            "this evaluation's test or validation users"
        )
    missing = sorted(set(seeds) - covered)
    if missing:
        return (
            f"adapter {adapter} did not hold out the users of seed(s) {missing} "
            f"(trained with eval_seeds {sorted(covered)})"
        )
    return None


def check_no_leak(cfg: Any, dataset: str, allow_unchecked: bool = False) -> None:
    """Refuse an experiment whose adapters could have trained on its held-out users (or
    whose adapters' training cannot be checked, unless ``allow_unchecked``)."""
    problems = [p for a in dict.fromkeys(adapters(cfg))
                if (p := leak(a, dataset, cfg.protocol, cfg.seeds, allow_unchecked))]  # fmt: skip
    if problems:
        raise ConfigError(
            "; ".join(problems)
            + ". Retrain with this evaluation's [protocol] and eval_seeds in the training config."
        )

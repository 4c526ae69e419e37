"""The one base of every config model, and reading configs from TOML.

Every config recfunnel reads (pipelines, stages, protocols, serving, training) is a
:class:`Strict` pydantic model: an unknown field is an error, not a silently ignored typo,
and a bad field is reported by its dotted path (``pipelines.1.stages.0.factors``) so a user
can find it in the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from recfunnel.core.errors import ConfigError


class Strict(BaseModel):
    """A config model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")


def _dotted(loc: tuple[Any, ...], data: Any) -> str:
    """``loc`` as the dotted path of the field in the file: validator steps
    ("function-after[…]") and the tags of tagged unions (a stage's ``cf``, a pipeline's
    ``plain``), which name no key of the data, are left out."""
    parts: list[str] = []
    node = data
    for i, p in enumerate(loc):
        if str(p).startswith("function-"):
            continue
        in_list = isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
        if in_list or (isinstance(node, dict) and p in node):
            node = node[p]
        elif isinstance(node, dict | list) and i < len(loc) - 1:
            continue  # a union's tag: the data has no such key, the path goes on below
        else:
            node = None
        parts.append(str(p))
    return ".".join(parts)


def format_validation(exc: ValidationError, source: str, data: Any = None) -> str:
    """One line per problem, each naming the field by its dotted path (in ``data``, the
    validated input, when given)."""
    lines = []
    for err in exc.errors():
        loc = _dotted(tuple(err["loc"]), data)
        lines.append(f"  {loc or '(top level)'}: {err['msg']}")
    return f"invalid config {source}:\n" + "\n".join(lines)


C = TypeVar("C", bound=BaseModel)


def find_all(model: BaseModel, cls: type[C]) -> Iterator[C]:
    """Every ``cls`` inside a config (fields, lists and nested models, depth first)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, cls):
                yield v
            elif isinstance(v, BaseModel):
                yield from find_all(v, cls)


def parse_config(data: dict[str, Any], cls: type[C], source: str = "(dict)") -> C:
    """``data`` validated as ``cls``; a :class:`ConfigError` names every bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, source, data)) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {p} is not valid TOML: {exc}") from None


def to_toml(config: BaseModel) -> str:
    """A config as TOML with every default filled in: what a run really used, and a file
    that parses back to the same config (``None`` fields are left out: TOML has no null)."""
    import tomli_w

    return tomli_w.dumps(_without_none(config.model_dump(mode="json")))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def load_config(path: str | Path, cls: type[C]) -> C:
    """Read and validate a TOML file as ``cls``."""
    return parse_config(read_toml(path), cls, str(path))

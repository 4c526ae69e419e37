"""``[engine]`` of an experiment: where its test users are ranked."""

from __future__ import annotations

from pydantic import Field

from recfunnel.core.config import Strict


class EngineConfig(Strict):
    """Where ``recfunnel eval|diagnose`` ranks test users: here, or on Ray."""

    kind: str = Field("local", pattern="^(local|ray)$")
    address: str | None = Field(None, description="ray: cluster address (None: start one)")
    actors: int = Field(2, ge=1, description="ray: actors per pipeline (each holds a copy)")
    batch_size: int = Field(64, ge=1, description="ray: requests per batch")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="ray: for LLMs loaded in the actor")

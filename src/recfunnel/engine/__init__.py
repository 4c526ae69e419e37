"""Engines that rank an experiment's test users: ``local`` (this process) or ``ray``
(:mod:`recfunnel.engine.ray`, imported only when asked for)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """Where ``recfunnel eval|diagnose`` ranks test users: here, or on Ray."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field("local", pattern="^(local|ray)$")
    address: str | None = Field(None, description="ray: cluster address (None: start one)")
    actors: int = Field(2, ge=1, description="ray: actors per pipeline (each fits it once)")
    batch_size: int = Field(64, ge=1, description="ray: requests per batch")
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="ray: for LLMs loaded in the actor")

"""What evaluation, serving and the engines hold: a :class:`Pipeline`, whether a plain
:class:`~recfunnel.pipeline.funnel.Funnel` or a cold/warm
:class:`~recfunnel.pipeline.router.Router`. A structural protocol (as LensKit's
``Trainable``), so callers never ask which one they have."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

import numpy as np

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.types import Catalog, Interactions, Request, Split
from recfunnel.stages.base import Stage, Trace

RowPicker = Callable[[Sequence[Request], CandidateBatch], np.ndarray]
"""Maps the requests and the probed stage's input head to a mask of the rows it runs for."""


class Pipeline(Protocol):
    """Fitted on training data, tuned on validation users, then run on batches."""

    catalog_: Catalog
    tuned_: dict[str, Any]
    fit_seconds_: float

    @property
    def probe_stage(self) -> str | None:
        """The trace name of the stage the position probe shuffles (None: no reranker)."""
        ...

    def fit(self, train: Interactions, catalog: Catalog) -> Self: ...

    def tune(self, split: Split) -> dict[str, Any]: ...

    def pending(self, prepared: Trace) -> bool:
        """Whether :meth:`finish` still has LLM stages to run on ``prepared``."""
        ...

    def named_stages(self) -> list[tuple[str, Stage[Any]]]:
        """Every fitted stage with its trace name (a router's prefixed by its path)."""
        ...

    def run_before(self, name: str, requests: Sequence[Request], k: int) -> Trace:
        """The trace stage ``name`` is given for ``requests``."""
        ...

    def prepare(self, requests: Sequence[Request], k: int,
                narrow: Callable[[np.ndarray], np.ndarray] | None = None) -> Trace: ...  # fmt: skip

    def finish(self, requests: Sequence[Request], prepared: Trace, k: int,
               shuffle: int | None = None, rows: RowPicker | None = None) -> Trace: ...  # fmt: skip

    def run(self, requests: Sequence[Request], k: int, shuffle: int | None = None,
            rows: RowPicker | None = None) -> Trace: ...  # fmt: skip

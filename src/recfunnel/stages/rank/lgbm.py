"""LightGBM LambdaRank plumbing for the learned ranker: lists stacked as LightGBM takes
them, a model fitted with (optional) early stopping on held-out lists, the search grid."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from recfunnel.core.errors import ConfigError

SEARCHABLE = ("num_leaves", "min_child_samples", "learning_rate")


def grid_points(search: dict[str, list[float]]) -> list[dict[str, float]]:
    bad = sorted(set(search) - set(SEARCHABLE))
    if bad:
        raise ConfigError(f"search: {bad} cannot be searched (only {', '.join(SEARCHABLE)})")
    keys = list(search)
    return [dict(zip(keys, values, strict=True)) for values in
            itertools.product(*(search[k] for k in keys))] or [{}]  # fmt: skip


Lists = tuple[np.ndarray, np.ndarray, list[int], np.ndarray]
"""Lists as LightGBM takes them: feature rows, labels, group sizes, starting scores."""


def stack(xs: list[np.ndarray], ys: list[np.ndarray], bs: list[np.ndarray],
           idx: Sequence[int] | np.ndarray | None = None) -> Lists:  # fmt: skip
    """Per-list features, labels and starting scores (those at ``idx``) stacked."""
    pick = range(len(ys)) if idx is None else idx
    return (np.concatenate([xs[i] for i in pick]), np.concatenate([ys[i] for i in pick]),
            [len(ys[i]) for i in pick], np.concatenate([bs[i] for i in pick]))  # fmt: skip


def fit_model(
    model: Any, train: Lists, held: Lists | None = None, patience: int | None = None
) -> Any:
    """``model`` fitted on ``train``; with ``held``, its NDCG@10 curve recorded on them
    (and, with ``patience``, training stopped when that stops improving)."""
    import lightgbm as lgb

    x, y, g, b = train
    evals: dict[str, Any] = {}
    if held is not None:
        ex, ey, eg, eb = held
        evals = {"eval_X": (ex,), "eval_y": (ey,), "eval_group": [eg],
                 "eval_init_score": [eb], "eval_at": [10]}  # fmt: skip
        if patience is not None:
            evals["callbacks"] = [lgb.early_stopping(patience, verbose=False)]
    return model.fit(x, y, group=g, init_score=b, **evals)

"""The run's own figures (issue 32, defects 3 and 5): a pipeline's invalid rate is its
invalid outputs over its outputs, not a sum of rates; ``mad`` splits the groups at the
year the fairness stage was configured with."""

from __future__ import annotations

import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.groups import year_groups
from recfunnel.core.metrics import evaluate
from recfunnel.core.types import Catalog, Dataset, Interactions, Request
from recfunnel.evaluate.config import parse_experiment
from recfunnel.evaluate.runner import cost_metrics, mad_split_year, run_experiment
from recfunnel.stages.base import LLMStats, Trace
from recfunnel.stages.explain.grounded import ExplainStats


def test_pipeline_invalid_rate_is_invalid_outputs_over_outputs():
    trace = Trace([Request(0, np.array([1]))], k=10, depth=10)
    # two parsing LLM stages: 9 of 10 and 3 of 10 invalid (the old sum said 1.2)
    trace.stats = {"a": LLMStats(rows=1, users=1, outputs=10, invalid_outputs=9),
                   "b": LLMStats(rows=1, users=1, outputs=10, invalid_outputs=3),
                   "pool": ExplainStats(rows=1, users=1)}  # fmt: skip
    out = cost_metrics(trace, 1, 0.1)
    assert out["invalid_rate"] == pytest.approx(12 / 20)
    assert 0.0 <= out["invalid_rate"] <= 1.0


def test_explain_stats_invalid_rate_counts_its_outputs():
    st = ExplainStats(rows=1, users=1, explained=2, outputs=4, invalid_outputs=3)
    assert st.figures()["invalid_rate"] == 0.75


def tiny_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 40
    years = [1980 + i for i in range(n_items)]  # 1980 … 2009
    cat = Catalog.build(list(range(n_items)), [f"Film {i} ({y})" for i, y in enumerate(years)],
                        genres=[("Drama",)] * n_items, years=years)  # fmt: skip
    users, items, times = [], [], []
    for u in range(n_users):
        picked = rng.choice(n_items, 12, replace=False, p=np.linspace(2, 1, n_items) / 45)
        users += [u] * 12
        items += list(picked)
        times += list(range(12))
    inter = Interactions.build(users=np.array(users), items=np.array(items), n_items=n_items,
                               rating=np.full(len(users), 5.0),
                               timestamp=np.array(times, dtype=float))  # fmt: skip
    return Dataset(name="tiny", interactions=inter, catalog=cat, timestamps_real=True)


def fair_experiment(split_year: int | None, *more: dict) -> dict:
    fair = {"kind": "fair", "top_n": 10} | ({"split_year": split_year} if split_year else {})
    return {
        "seeds": 1, "metrics": ["mad", "hr@10"],
        "protocol": {"name": "cold-start", "n_users": 10, "history": 3},
        "pipelines": [{"name": "fair", "pool_size": 20,
                       "stages": [{"kind": "popularity"}, fair]}, *more],
    }  # fmt: skip


def test_mad_uses_the_fair_stages_split_year():
    data = tiny_dataset()
    cfg = parse_experiment(fair_experiment(2000))
    assert mad_split_year(cfg) == 2000
    res = run_experiment(cfg, dataset=data, keep_traces=True).results[0]
    split = cfg.protocol.split(data, 0)
    final = res.trace.final.items
    at = {y: evaluate(final, split.test.truth, ["mad"], data.catalog.n_items,
                      item_groups=year_groups(data.catalog, y)).means["mad"]
          for y in (1996, 2000)}  # fmt: skip
    assert at[1996] != at[2000]  # the split year matters on this catalog
    assert res.metrics["mad"] == pytest.approx(at[2000])
    assert mad_split_year(parse_experiment(fair_experiment(None))) == 1996


def test_pipelines_that_split_at_different_years_cannot_share_one_mad():
    other = {"name": "fair-1990", "stages": [{"kind": "popularity"},
                                             {"kind": "fair", "split_year": 1990}]}  # fmt: skip
    with pytest.raises(ConfigError, match="different years"):
        mad_split_year(parse_experiment(fair_experiment(2000, other)))

"""``recfunnel diagnose``: run pipelines over seeds with their stage traces, then measure
each stage's coverage, exposure, discrimination, position bias, validity and cost, test
every pipeline against a baseline, and sweep the reranker's pool size.

The output is one JSON document (schema ``diagnosis.schema.json`` beside this file); the
HTML report (:mod:`recfunnel.evaluate.report`) is drawn from that document alone.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np

from recfunnel.core import __version__
from recfunnel.core.candidates import PAD
from recfunnel.core.metrics import evaluate, exposure, hit_matrix
from recfunnel.core.types import Dataset, EvalSet, Split
from recfunnel.evaluate import diagnostics as dg
from recfunnel.evaluate.config import DiagnoseConfig
from recfunnel.evaluate.probes import llm_scores, position_probe, ranker_probe, reordered
from recfunnel.evaluate.runner import ExperimentResult, RunResult, run_experiment
from recfunnel.evaluate.stats import holm, paired_test
from recfunnel.pipeline import Funnel, Pipeline, PipelineConfig, Shared
from recfunnel.stages.base import LLMStats, Trace
from recfunnel.stages.registry import stage_class

SCHEMA_ID = "recfunnel.diagnosis/1"
POOL_CUTOFFS = (50, 200, 1000)
DISCRIMINATION_DEPTH = 50
"""Candidates per user whose scores are split by relevance: a reranker's whole input,
a retriever's head (its tail is a thousand near-ties that say little)."""
HIST_BINS = 30


def schema() -> dict[str, Any]:
    """The JSON Schema that every diagnosis.json validates against."""
    text = resources.files("recfunnel.evaluate").joinpath("diagnosis.schema.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _num(x: float | np.floating[Any] | None) -> float | None:
    """JSON has no NaN: a value that cannot be computed is null."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


# ---- per stage ------------------------------------------------------------------------
def _discrimination(scores: np.ndarray, hits: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    d = dg.discrimination(scores, hits, seed=seed, n_boot=n_boot)
    pos, neg = dg.by_relevance(scores, hits)
    return {
        "cohen_d": _num(d.cohen_d),
        "cohen_d_ci": [_num(d.cohen_d_ci[0]), _num(d.cohen_d_ci[1])],
        "auc": _num(d.auc),
        "mean_relevant": _num(d.mean_relevant),
        "mean_irrelevant": _num(d.mean_irrelevant),
        "n_relevant": d.n_relevant,
        "n_irrelevant": d.n_irrelevant,
        "hist": dg.histogram(pos, neg, HIST_BINS),
    }


def stage_report(
    name: str,
    runs: list[RunResult],
    truths: list[list[np.ndarray]],
    n_items: int,
    n_boot: int,
) -> dict[str, Any]:
    """One stage of one pipeline, over seeds (``runs`` and ``truths`` aligned by seed)."""
    batches = [r.trace.batches[name] for r in runs if r.trace is not None]
    out: dict[str, Any] = {"depth": int(batches[0].depth)}
    for k in POOL_CUTOFFS:
        vals = [dg.pool_recall(b, t, n_items, k) for b, t in zip(batches, truths, strict=True)]
        out[f"recall@{k}"] = _num(np.mean(vals))
    expo = [dg.exposure_stats(b.items, n_items) for b in batches]
    for key in expo[0]:
        out[key] = _num(np.mean([e[key] for e in expo]))
    counts = np.sum([exposure(b.items, 10, n_items) for b in batches], axis=0)
    out.update(dg.concentration(counts))

    depth = min(DISCRIMINATION_DEPTH, batches[0].depth)
    scores = np.vstack([b.scores[:, :depth] for b in batches])
    hits = np.vstack(
        [hit_matrix(b.items[:, :depth], t, n_items) for b, t in zip(batches, truths, strict=True)]
    )
    hits &= np.vstack([b.items[:, :depth] != PAD for b in batches])
    disc = _discrimination(scores, hits, n_boot, seed=0)
    out.update({k: disc[k] for k in ("cohen_d", "cohen_d_ci", "auc")})
    out["discrimination"] = disc
    out["fallback_rate"] = _num(np.mean([b.fallback_rate for b in batches]))

    for key in llm_scores(batches[0]):  # an LLM stage's own scores (a reranker's, features)
        raw = np.vstack([b.extras[key][:, :depth] for b in batches])
        raw_d = dg.discrimination(raw, hits, n_boot=n_boot)
        out[f"{key}_cohen_d"] = _num(raw_d.cohen_d)
        out[f"{key}_auc"] = _num(raw_d.auc)
    probes = [r.probes for r in runs if r.probes.get("stage") == name]
    if probes:  # the probed stage (the first reranker): position bias
        out["position_corr"] = _num(np.mean([
            dg.position_correlation(reordered(r.trace, name).extras["input_pos"])
            for r in runs if r.trace is not None]))  # fmt: skip
        for key in (
            "top10_change",
            "top1_change",
            "position_corr_shuffled",
            "ndcg@10_shuffled",
            "ndcg@10_probe_users",
            "ndcg@10_input_order",
        ):
            out[key] = _num(np.mean([p[key] for p in probes]))
        # does the reranker beat its input order without seeing that order?
        test = paired_test(
            np.concatenate([p["per_user"]["shuffled"] for p in probes]),
            np.concatenate([p["per_user"]["input_order"] for p in probes]),
        )
        out["shuffled_vs_input_order"] = {k: _num(v) for k, v in test.to_json().items()}
    stats = [r.trace.stats[name].figures() for r in runs
             if r.trace is not None and name in r.trace.stats]  # fmt: skip
    if any("invalid_rate" in st for st in stats):  # a stage that parses LLM output
        for key in ("invalid_rate", "invalid_row_rate", "order_agreement"):
            got = np.array([st.get(key, np.nan) for st in stats], np.float64)
            out[key] = _num(got[np.isfinite(got)].mean()) if np.isfinite(got).any() else None
    return out


# ---- per pipeline ---------------------------------------------------------------------
def per_user_seconds(run: RunResult) -> np.ndarray:
    """Each user's latency: its share of the non-LLM work plus its own LLM compute time.
    Only a run whose answers were all computed now reports it (see ``replayed``)."""
    fr = run.trace
    assert fr is not None
    n = run.n_users
    per_row = {s: st.row_seconds for s, st in fr.stats.items()
               if isinstance(st, LLMStats) and st.row_seconds is not None}  # fmt: skip
    llm_wall = sum(fr.timings.get(s, 0.0) for s in per_row)
    base = max(run.timings["run_s"] - llm_wall, 0.0) / max(n, 1)
    seconds = np.full(n, base)
    for s, row_seconds in per_row.items():
        rows = np.asarray(row_seconds, np.float64).copy()
        unknown = ~np.isfinite(rows)  # answers cached before compute time was recorded
        rows[unknown] = fr.timings.get(s, 0.0) / max(n, 1)
        seconds += rows
    return seconds


def replayed(runs: list[RunResult]) -> tuple[int, int]:
    """(LLM calls, of which answered from the answer cache) over every LLM stage and seed."""
    calls = hits = 0
    for r in runs:
        for st in r.trace.stats.values() if r.trace else ():
            if isinstance(st, LLMStats):
                calls, hits = calls + st.llm_calls, hits + st.cache_hits
    return calls, hits


def pipeline_report(
    name: str,
    runs: list[RunResult],
    truths: list[list[np.ndarray]],
    n_items: int,
    cfg: DiagnoseConfig,
) -> dict[str, Any]:
    d = cfg.diagnose
    metrics = {
        m: {
            "mean": _num(np.mean([r.metrics[m] for r in runs])),
            "std": _num(np.std([r.metrics[m] for r in runs])),
            "per_seed": [_num(r.metrics[m]) for r in runs],
        }
        for m in cfg.metrics
    }
    calls, hits = replayed(runs)
    lat: dict[str, float | None] = {
        **dg.latency_percentiles(np.concatenate([per_user_seconds(r) for r in runs]))
    }
    if hits:  # a replayed answer's time was measured another day, on another load
        lat = dict.fromkeys(lat)
    per_user = {k: float(np.mean([r.metrics[k] for r in runs])) for k in (
        "llm_calls_per_user", "prompt_tokens_per_user", "completion_tokens_per_user")}  # fmt: skip
    cost = {
        **{k: _num(v) for k, v in lat.items()},
        "cached_share": _num(hits / calls) if calls else 0.0,
        **per_user,
        "cost_per_1000": dg.cost_per_1000(
            per_user["prompt_tokens_per_user"],
            per_user["completion_tokens_per_user"],
            d.price_prompt,
            d.price_completion,
        ),
    }
    trace = runs[0].trace.batches if runs[0].trace else {}
    blends = [info for r in runs for info in r.tuned.values() if "blend" in info]
    return {
        "name": name,
        "metrics": metrics,
        "cost": cost,
        "calibration": blends or None,
        "tuned": [r.tuned for r in runs],
        "rankers": ranker_report(runs) or None,
        "explain": {  # grounding of the explanations (rates over explained items)
            k: _num(np.mean([r.metrics[k] for r in runs]))
            for k in runs[0].metrics
            if k.startswith("explain_")
        }
        or None,
        "stages": {s: stage_report(s, runs, truths, n_items, d.bootstrap) for s in trace},
    }


def ranker_report(runs: list[RunResult]) -> dict[str, Any]:
    """Per learned ranker: each feature's gain share and test-set permutation importance
    (NDCG@10 drop when shuffled), means over seeds, largest first."""
    out: dict[str, Any] = {}
    names = [n for n in runs[0].probes.get("importance", {})]
    for name in names:
        gains = [r.tuned.get(name, {}).get("importance", {}) for r in runs]
        perms = [
            r.probes["importance"][name] for r in runs if name in r.probes.get("importance", {})
        ]
        features = list(perms[0])
        perm = {f: _num(np.mean([p[f]["ndcg@10_drop"] for p in perms])) for f in features}
        gain = {f: _num(np.mean([g.get(f, 0.0) for g in gains])) for f in features}
        order = sorted(features, key=lambda f: -(perm[f] or 0.0))
        out[name] = {"features": [{"name": f, "gain": gain[f], "ndcg@10_drop": perm[f]}
                                  for f in order],
                     "n_seeds": len(perms)}  # fmt: skip
    return out


def comparisons(result: ExperimentResult, cfg: DiagnoseConfig) -> list[dict[str, Any]]:
    """Paired tests over users (seed × user pairs) and over seed means, Holm-adjusted
    within each family (all-vs-baseline, or the extra pairs) per metric and unit."""
    d = cfg.diagnose
    names = [p.name for p in cfg.pipelines]
    families: dict[str, list[tuple[str, str]]] = {
        "baseline": [(n, d.baseline) for n in names if n != d.baseline],
        "extra": [(a, b) for a, b in d.compare],
    }
    out: list[dict[str, Any]] = []
    for family, pairs in families.items():
        for metric in d.test_metrics:
            for over in ("users", "seeds"):
                rows = []
                for a, b in pairs:
                    ra = [r for r in result.results if r.pipeline == a]
                    rb = [r for r in result.results if r.pipeline == b]
                    if over == "users":
                        va = np.concatenate([r.per_user[metric] for r in ra])
                        vb = np.concatenate([r.per_user[metric] for r in rb])
                    else:
                        va = np.array([r.metrics[metric] for r in ra])
                        vb = np.array([r.metrics[metric] for r in rb])
                    ok = np.isfinite(va) & np.isfinite(vb)  # e.g. mad of a one-group list
                    va, vb = va[ok], vb[ok]
                    t = paired_test(va, vb)
                    rows.append({"pipeline": a, "reference": b, "family": family,
                                 "metric": metric, "over": over, "mean": float(va.mean()),
                                 "reference_mean": float(vb.mean()), **t.to_json()})  # fmt: skip
                for row, p_adj in zip(rows, holm([r["t_p"] for r in rows]), strict=True):
                    row["p_value"] = row["t_p"]
                    row["p_holm"] = p_adj
                out.extend(rows)
    return [{k: (_num(v) if isinstance(v, float) else v) for k, v in r.items()} for r in out]


# ---- pool-size sweep ------------------------------------------------------------------
def pool_sweep(
    cfg: DiagnoseConfig, data: Dataset, on_step: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """Feed the sweep pipeline's reranker 20, 50, … candidates on the first seed's users:
    more candidates raise the pool's recall but cost LLM time and dilute its attention."""
    sweep = cfg.diagnose.sweep
    if sweep is None:
        return None
    pipe = next(p for p in cfg.pipelines if p.name == sweep.pipeline)
    assert isinstance(pipe, PipelineConfig)
    at = next(i for i, st in enumerate(pipe.stages) if stage_class(st.kind).probed)
    seed = cfg.seeds[0]
    split = cfg.protocol.split(data, seed)
    m = len(split.test) if sweep.users is None else min(sweep.users, len(split.test))
    test = EvalSet(split.test.requests[:m], split.test.truth[:m])
    shared = Shared()
    rows = []
    for size in sweep.pool_sizes:
        stages = [st.model_dump() for st in pipe.stages]
        stages[at]["top_n"] = size
        sized = PipelineConfig.model_validate(
            {"name": f"{pipe.name}@{size}", "pool_size": max(pipe.pool_size, size),
             "stages": stages}
        )  # fmt: skip
        funnel = Funnel(sized, seed, shared).fit(split.train, data.catalog)
        funnel.tune(split)
        res = funnel.run(test.requests, 10)
        assert res.final is not None and funnel.probe_stage is not None
        scored = evaluate(res.final.items, test.truth, cfg.diagnose.test_metrics,
                          data.catalog.n_items)  # fmt: skip
        name = funnel.probe_stage
        st = res.stats[name]
        figures = st.figures()
        seconds = np.asarray(getattr(st, "row_seconds", np.full(m, np.nan)), np.float64)
        before = res.inputs[name]
        rows.append({
            "pool": size,
            **{k: float(v) for k, v in scored.means.items()},
            "pool_recall": _num(dg.pool_recall(before, test.truth, data.catalog.n_items, size)),
            "llm_ms_per_user_mean": _num(1000 * np.nanmean(seconds)),
            **{k: _num(v) for k, v in dg.latency_percentiles(np.nan_to_num(seconds)).items()},
            "llm_calls_per_user": float(figures.get("llm_calls_per_user", 0.0)),
            "prompt_tokens_per_user": float(figures.get("prompt_tokens_per_user", 0.0)),
            "blend": getattr(funnel.stage(name), "blend_", None),  # as calibrated, if it was
        })  # fmt: skip
        if on_step:
            on_step(f"pool sweep {size}")
    return {"pipeline": pipe.name, "seed": seed, "n_users": m, "rows": rows}


# ---- the whole diagnosis --------------------------------------------------------------
def diagnose(
    cfg: DiagnoseConfig,
    *,
    dataset: Dataset | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Everything ``recfunnel diagnose`` writes to diagnosis.json: each stage of each
    pipeline measured over seeds, the pipelines tested against the baseline, the pool-size
    sweep."""
    data = dataset if dataset is not None else cfg.load_data()
    truths: dict[int, list[np.ndarray]] = {}
    probes = (position_probe(cfg.diagnose.position_users),
              ranker_probe(cfg.diagnose.permutation_repeats))  # fmt: skip

    def keep_truth(pipeline: Pipeline, split: Split, out: Trace) -> dict[str, Any]:
        truths[split.seed] = split.test.truth
        return {k: v for p in probes for k, v in p(pipeline, split, out).items()}

    result = run_experiment(cfg, dataset=data, keep_traces=True, on_step=on_step, probe=keep_truth)
    n_items = data.catalog.n_items
    pipelines = []
    for pipe in cfg.pipelines:
        runs = [r for r in result.results if r.pipeline == pipe.name]
        seed_truths = [truths[r.seed] for r in runs]
        pipelines.append(pipeline_report(pipe.name, runs, seed_truths, n_items, cfg))
    d = cfg.diagnose
    return {
        "schema": SCHEMA_ID,
        "recfunnel_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": result.dataset,
        "protocol": result.protocol,
        "protocol_params": result.protocol_params,
        "seeds": result.seeds,
        "n_users": [r.n_users for r in result.results if r.pipeline == cfg.pipelines[0].name],
        "n_items": n_items,
        "baseline": d.baseline,
        "prices": {"prompt_per_1m": d.price_prompt, "completion_per_1m": d.price_completion},
        "metrics": cfg.metrics,
        "test_metrics": d.test_metrics,
        "pipelines": pipelines,
        "comparisons": comparisons(result, cfg),
        "mitigations": {"pool_sweep": pool_sweep(cfg, data, on_step)},
    }

"""Probes run right after each pipeline's test pass, on the same users (the position
probe shuffles the reranker's input; the ranker probe shuffles each feature), and the two
helpers that find a stage's own LLM scores and its input positions in a trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.metrics import evaluate
from recfunnel.core.types import Split
from recfunnel.evaluate import diagnostics as dg
from recfunnel.pipeline import Pipeline
from recfunnel.stages.base import Explainable, Trace


def position_probe(users: int | None, seed_offset: int = 1000) -> Callable[..., dict[str, Any]]:
    """Rerun the reranker on a shuffled input: how much of the top-10 changes, and how
    much output position still follows (now meaningless) input position."""

    def probe(pipeline: Pipeline, split: Split, out: Trace) -> dict[str, Any]:
        name = pipeline.probe_stage
        if name is None:
            return {}
        m = len(split.test) if users is None else min(users, len(split.test))
        shuffled = pipeline.run(split.test.requests[:m], 10, shuffle=split.seed + seed_offset)
        assert out.final is not None and shuffled.final is not None
        a, b = out.final.items[:m, :10], shuffled.final.items[:, :10]
        truth, n_items = split.test.truth[:m], pipeline.catalog_.n_items
        ndcg = {  # per user: reranked as shown, reranked shuffled, the reranker's input order
            key: evaluate(x, truth, ["ndcg@10"], n_items).per_user["ndcg@10"]
            for key, x in (("in", a), ("shuffled", b), ("input", out.inputs[name].items[:m]))
        }
        return {
            "stage": name,
            "n_users": m,
            "top10_change": 1.0 - dg.topk_overlap(a, b, 10),
            "top1_change": float(np.mean(a[:, 0] != b[:, 0])),
            "position_corr_shuffled": dg.position_correlation(
                reordered(shuffled, name).extras["input_pos"]
            ),
            # quality when the reranker cannot lean on the ranker's order, same users
            "ndcg@10_shuffled": float(ndcg["shuffled"].mean()),
            "ndcg@10_probe_users": float(ndcg["in"].mean()),
            "ndcg@10_input_order": float(ndcg["input"].mean()),
            "per_user": {"shuffled": ndcg["shuffled"], "input_order": ndcg["input"]},
        }

    return probe


def llm_scores(batch: CandidateBatch) -> list[str]:
    """The LLM's own per-candidate scores a stage keeps (``llm_score`` of a reranker,
    ``llm_verbalizer`` and ``llm_yes`` of a feature stage; not their ranks)."""
    return [k for k, v in batch.extras.items() if k.startswith("llm_")
            and not k.endswith("_rank") and np.asarray(v).dtype.kind == "f"]  # fmt: skip


def reordered(trace: Trace, probed: str) -> CandidateBatch:
    """The probed stage's output or, when it keeps its input order (an LLM feature stage),
    that of the first later head stage that reorders (the ranker reading its features):
    whichever output carries where each item stood in its input (``input_pos``)."""
    names = list(trace.batches)
    for n in names[names.index(probed) :]:
        if trace.modes.get(n) == "head" and trace.batches[n].reorders:
            return trace.batches[n]
    raise KeyError(f"no stage from {probed} on reorders its input")


def ranker_probe(repeats: int, seed: int = 0) -> Callable[..., dict[str, Any]]:
    """Test-set permutation importance of every feature of every learned ranker: how much
    NDCG@10 falls when one feature is shuffled over the test users' candidates."""

    def probe(pipeline: Pipeline, split: Split, out: Trace) -> dict[str, Any]:
        found = {}
        for name, stage in pipeline.named_stages():
            if isinstance(stage, Explainable):
                before = pipeline.run_before(name, split.test.requests, out.k)
                found[name] = stage.permutation_importance(
                    split.test.requests, before, split.test.truth, repeats, seed
                )
        return {"importance": found} if found else {}

    return probe

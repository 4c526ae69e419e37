"""How much can any reranker gain on a candidate list? Classical reorderings side by side.

Before fine-tuning an LLM to beat its input order, measure what known signals reach on the
same lists: the cold-start protocol's test users (seeds 0..N-1), the retriever's top
``--top-n`` as the input order, and the same items reordered by

- ``liked``: how many training users rated each item >= the relevance threshold (an item
  prior: "quality", not personal);
- ``als`` / ``itemknn``: the collaborative filter's score for the user's history (personal
  signal, learned from every training interaction);
- ``oracle``: the relevant items first (the ceiling).

Prints NDCG@10 / HR@10 of each, and each reordering against the input order (paired over
users × seeds: mean difference, t-test p). A fine-tuned reranker that is to beat the input
order needs signal of the kind these rows show; if even CF gains little, so will it.

    python benchmarks/rerank_headroom.py --seeds 3 --json out/headroom.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recfunnel.core.candidates import PAD
from recfunnel.core.metrics import evaluate, hit_matrix
from recfunnel.core.types import Catalog, Split
from recfunnel.data import load_dataset
from recfunnel.data.splits import ColdStartConfig
from recfunnel.evaluate.stats import paired_test
from recfunnel.stages.base import FitContext
from recfunnel.stages.retrieve.cf import CFConfig, CFRetriever
from recfunnel.stages.retrieve.popularity import PopularityConfig, PopularityRetriever

METRICS = ["ndcg@10", "hr@10"]


def orders(
    split: Split, catalog: Catalog, items: np.ndarray, seed: int, relevance: float
) -> dict[str, np.ndarray]:
    """Each reordering's key per candidate (higher first); the input order is -position."""
    train, reqs = split.train, split.test.requests
    liked = PopularityRetriever(PopularityConfig(min_rating=relevance)).fit(
        FitContext(train, catalog)
    )
    keys = {"input order": -np.broadcast_to(np.arange(items.shape[1], dtype=float), items.shape)}
    keys["liked"] = liked.counts_[items].astype(float)
    depth = min(train.n_items, 5000)
    for model in ("als", "itemknn"):
        cf = CFRetriever(CFConfig(kind="cf", model=model, seed=seed)).fit(
            FitContext(train, catalog)
        )
        ranked = cf.retrieve(reqs, depth).items
        rank = np.full((len(reqs), train.n_items + 1), depth, dtype=float)
        rows = np.repeat(np.arange(len(reqs)), ranked.shape[1])
        rank[rows, np.where(ranked == PAD, train.n_items, ranked).ravel()] = np.tile(
            np.arange(ranked.shape[1], dtype=float), len(reqs)
        )
        keys[model] = -np.take_along_axis(rank, items, 1)
    keys["oracle"] = hit_matrix(items, split.test.truth, train.n_items).astype(float)
    return keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=100, help="test users per seed")
    ap.add_argument("--history", type=int, default=5)
    ap.add_argument("--top-n", type=int, default=20, help="the list a reranker would get")
    ap.add_argument("--relevance", type=float, default=4.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    data = load_dataset("ml-latest-small", args.data_dir)
    per_user: dict[str, dict[str, list[np.ndarray]]] = {}
    protocol = ColdStartConfig(  # the diagnosis configs' protocol: the same test users
        n_users=args.users, history=args.history, relevance=args.relevance, n_valid=100
    )
    for seed in range(args.seeds):
        split = protocol.split(data, seed)
        pop = PopularityRetriever().fit(FitContext(split.train, data.catalog))
        items = pop.retrieve(split.test.requests, args.top_n).items
        for name, key in orders(split, data.catalog, items, seed, args.relevance).items():
            ranked = np.take_along_axis(items, np.argsort(-key, axis=1, kind="stable"), 1)
            m = evaluate(ranked, split.test.truth, METRICS, split.train.n_items)
            for metric in METRICS:
                per_user.setdefault(name, {}).setdefault(metric, []).append(m.per_user[metric])
    rows = []
    base = {m: np.concatenate(v) for m, v in per_user["input order"].items()}
    print(f"popularity top {args.top_n}, cold-start ({args.history} history items), "
          f"{args.users} users × {args.seeds} seeds")  # fmt: skip
    for name, by_metric in per_user.items():
        vals = {m: np.concatenate(v) for m, v in by_metric.items()}
        test = paired_test(vals["ndcg@10"], base["ndcg@10"])
        row = {"order": name, **{m: float(v.mean()) for m, v in vals.items()},
               "ndcg@10_diff": test.mean_diff, "p": test.t_p}  # fmt: skip
        rows.append(row)
        print(f"{name:>12}: NDCG@10 {row['ndcg@10']:.3f}  HR@10 {row['hr@10']:.3f}  "
              f"vs input order {test.mean_diff:+.3f} (p {test.t_p:.2g})")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

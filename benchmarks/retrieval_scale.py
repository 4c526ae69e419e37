"""faiss HNSW vs exact search as the catalog grows: recall@100 and queries/s side by side.

Synthetic catalogs of 10k / 100k / 1M unit vectors (a mixture of 1,000 Gaussian clusters,
so neighbourhoods are as uneven as real item embeddings), queries drawn near random
items. Exact = ``IndexFlatIP`` (what ``content.index = "flat"`` uses); HNSW =
``IndexHNSWFlat`` with the content retriever's settings (M 32, efConstruction 200), its
efSearch swept. Prints build time, recall@100 of HNSW against exact, queries/s of each and
their ratio, and the time to retrieve the top 100 for 10k users in one batch.

    python benchmarks/retrieval_scale.py --sizes 10000,100000,1000000 --json out/ann.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np


def catalog(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queries(items: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    q = items[rng.integers(0, len(items), n)] + 0.3 * rng.standard_normal(
        (n, items.shape[1])
    ).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def timed_search(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--users", type=int, default=10_000, help="batch retrieval size")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--ef-search", default="128,256,512", help="efSearch values to sweep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        x = catalog(n, args.dim, args.seed)
        q = queries(x, args.queries, args.seed)
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(x)
        hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 200
        t0 = time.perf_counter()
        hnsw.add(x)
        build = time.perf_counter() - t0
        truth, t_exact = timed_search(exact, q, args.k)
        users = queries(x, args.users, args.seed + 7)
        _, batch_exact = timed_search(exact, users, args.k)
        for ef in (max(int(e), args.k) for e in args.ef_search.split(",")):
            hnsw.hnsw.efSearch = ef
            got, t_hnsw = timed_search(hnsw, q, args.k)
            recall = float(np.mean([len(set(a) & set(b)) / args.k
                                    for a, b in zip(truth, got, strict=True)]))  # fmt: skip
            _, batch_hnsw = timed_search(hnsw, users, args.k)
            row = {
                "items": n,
                "ef_search": ef,
                "hnsw_build_s": build,
                "recall@100": recall,
                "exact_qps": args.queries / t_exact,
                "hnsw_qps": args.queries / t_hnsw,
                "speedup": t_exact / t_hnsw,
                "exact_batch_s": batch_exact,
                "hnsw_batch_s": batch_hnsw,
            }
            rows.append(row)
            print(f"{n:>9,} items, ef {ef:>4}: build {build:6.1f} s | recall@{args.k} "
                  f"{recall:.3f} | exact {row['exact_qps']:7.0f} q/s, HNSW {row['hnsw_qps']:7.0f} "
                  f"q/s ({row['speedup']:.1f}×) | {args.users:,} users: exact "
                  f"{batch_exact:.2f} s, HNSW {batch_hnsw:.2f} s", flush=True)  # fmt: skip
    print(f"threads: {faiss.omp_get_max_threads()}, dim {args.dim}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

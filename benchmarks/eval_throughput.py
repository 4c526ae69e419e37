"""Evaluation throughput: users/s of the local engine vs the Ray engine, as users grow.

Synthetic data (a 10k-item catalog, power-law popularity, 30 events per user) with 1k,
10k and 100k users; the cold-start protocol ranks every user's top 200 with ALS and scores
HR/NDCG/recall. Prints, per size and engine, fit seconds, ranking seconds and users/s of
the ranking pass, and the Ray/local ratio. Ray runs on this machine (``--actors`` actors);
on a cluster pass ``--address``.

    python benchmarks/eval_throughput.py --users 1000,10000,100000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recfunnel.core.machine import describe, require_quiet
from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.evaluate.config import parse_experiment as parse_config
from recfunnel.evaluate.runner import run_experiment


def synthetic(n_users: int, n_items: int = 10_000, per_user: int = 30, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.choice(n_items, size=len(users), p=pop)
    ts = np.tile(np.arange(per_user, dtype=float), n_users)
    inter = Interactions.build(users, items, n_items, rating=np.full(len(users), 5.0), timestamp=ts)
    catalog = Catalog.build(np.arange(n_items), [f"Item {i}" for i in range(n_items)],
                            genres=[("Drama",)] * n_items)  # fmt: skip
    return Dataset(f"synthetic-{n_users}", inter, catalog)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1000,10000,100000")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--address", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--busy-ok", action="store_true", help="measure on a busy machine")
    args = ap.parse_args()
    machine = require_quiet(args.busy_ok)
    print(describe(machine))

    rows = []
    for n in (int(v) for v in args.users.split(",")):
        data = synthetic(n)
        base = {
            "protocol": {"name": "cold-start", "n_users": n, "history": 5, "relevance": None},
            "seeds": [0],
            "metrics": ["hr@10", "ndcg@10", "recall@200"],
            "pipelines": ["cf"],
        }
        engines = {
            "local": {"kind": "local"},
            "ray": {
                "kind": "ray",
                "actors": args.actors,
                "batch_size": args.batch_size,
                "address": args.address,
            },
        }
        got = {}
        for name, engine in engines.items():
            r = run_experiment(parse_config({**base, "engine": engine}), dataset=data).results[0]
            got[name] = r
            rows.append({"users": r.n_users, "engine": name, "fit_s": r.timings["fit_s"],
                         "rank_s": r.timings["run_s"], "users_per_s": r.n_users /
                         r.timings["run_s"], "ndcg@10": r.metrics["ndcg@10"]})  # fmt: skip
            print(f"{r.n_users:>7,} users {name:6}: fit {r.timings['fit_s']:6.1f} s, rank "
                  f"{r.timings['run_s']:6.1f} s = {rows[-1]['users_per_s']:8.0f} users/s "
                  f"(NDCG@10 {r.metrics['ndcg@10']:.4f})", flush=True)  # fmt: skip
        same = got["local"].metrics == {**got["local"].metrics, **{
            m: got["ray"].metrics[m] for m in base["metrics"]}}  # fmt: skip
        ratio = got["local"].timings["run_s"] / got["ray"].timings["run_s"]
        print(f"{'':7}  ray/local users/s: {ratio:.2f}×; identical metrics: {same}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""What LLM enrichment buys the content retriever: raw vs enriched item text, side by side.

Describes the N most popular items of ml-latest-small with the bundled LLM (cached, so a
rerun is free), then measures on those items the silhouette of their embeddings on genre
clusters (cosine; each item labelled by its first genre), and, on the cold-start protocol,
the content pool's recall@200 with raw vs enriched text (items beyond the N keep raw text).

A quality benchmark: it publishes no speed, so it does not wait for a quiet machine (its
first step, describing the items, loads the machine itself). The describing time is kept
only when every description was generated in this run, never when replayed from the cache.

    python benchmarks/enrich_quality.py --limit 1000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import silhouette_score

from recfunnel.core.machine import machine_load
from recfunnel.core.metrics import evaluate
from recfunnel.data import load_dataset, make_split
from recfunnel.llm import build_llm
from recfunnel.stages.base import FitContext
from recfunnel.stages.retrieve.content import (
    ContentConfig,
    ContentRetriever,
    embed_texts,
    resolve_model_path,
)
from recfunnel.stages.retrieve.enrich import (
    ENRICHED,
    EnrichConfig,
    describe_items,
    pick_items,
    with_descriptions,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    machine = machine_load()

    data = load_dataset(args.dataset)
    cfg = EnrichConfig(limit=args.limit)
    llm = build_llm(cfg.llm)
    items = pick_items(data.catalog, data.interactions, args.limit)
    t0 = time.perf_counter()
    descriptions = describe_items(data.catalog, llm, items, cfg.max_tokens, cfg.batch_size)
    enrich_s = time.perf_counter() - t0
    enriched = with_descriptions(data.catalog, items, descriptions)

    model = resolve_model_path("all-MiniLM-L6-v2")
    genres = data.catalog.frame["genres"].iloc[items]
    labelled = np.array([len(g) > 0 for g in genres])
    labels = np.array([g[0] if len(g) else "" for g in genres])[labelled]
    sil = {}
    for name, frame in (
        ("raw", data.catalog.frame["text"]),
        ("enriched", enriched.frame[ENRICHED]),
    ):
        emb = embed_texts(frame.iloc[items].astype(str).tolist(), model, 64)
        sil[name] = float(silhouette_score(emb[labelled], labels, metric="cosine"))

    recall: dict[str, list[float]] = {"raw": [], "enriched": []}
    for seed in range(args.seeds):
        split = make_split(data, "cold-start", seed, n_users=args.users)
        for name, cat, field in (("raw", data.catalog, "text"), ("enriched", enriched, ENRICHED)):
            r = ContentRetriever(ContentConfig(text_field=field)).fit(FitContext(split.train, cat))
            out = r.retrieve(split.test.requests, 200)
            m = evaluate(out.items, split.test.truth, ["recall@200"], cat.n_items).means
            recall[name].append(m["recall@200"])

    u = llm.usage
    result = {
        "items_described": len(items),
        "enrich_seconds": enrich_s if u.cache_hits == 0 else None,  # a replay is no speed
        "generated": u.calls - u.cache_hits,
        "completion_tokens": u.completion_tokens,
        "silhouette_raw": sil["raw"],
        "silhouette_enriched": sil["enriched"],
        "recall@200_raw": float(np.mean(recall["raw"])),
        "recall@200_raw_std": float(np.std(recall["raw"])),
        "recall@200_enriched": float(np.mean(recall["enriched"])),
        "recall@200_enriched_std": float(np.std(recall["enriched"])),
    }
    print(f"described {len(items)} items ({u.cache_hits} from cache)")
    print(f"{'':24}{'raw':>10}{'enriched':>10}{'change':>9}")
    s_raw, s_enr = sil["raw"], sil["enriched"]
    print(f"{'silhouette (genres)':24}{s_raw:>10.3f}{s_enr:>10.3f}{s_enr - s_raw:>+9.3f}")
    rr, re = result["recall@200_raw"], result["recall@200_enriched"]
    print(f"{'content recall@200':24}{rr:>10.3f}{re:>10.3f}{re / rr:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, **result}, f, indent=2)


if __name__ == "__main__":
    main()

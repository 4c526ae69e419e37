"""LLM rerankers side by side on the same users: cost and quality in one run.

Verbalizer (one forward pass), permutation generation (RankGPT, window 20, step 10) and
pointwise yes/no, each reranking the same hybrid pool's top 20 for the same cold-start
users, with the answer cache off so every call is really made. Prints seconds, LLM calls
and tokens per user, NDCG@10 against the input order, and the ratios between methods.

    python benchmarks/rerank_methods.py --users 30 --backend llamacpp
"""

from __future__ import annotations

import argparse
import json

from recfunnel.config import ExperimentConfig, builtin_pipeline
from recfunnel.evaluate.runner import run_experiment

METHODS = ("verbalizer", "permutation", "pointwise")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    pipelines = [builtin_pipeline("hybrid")]
    for m in METHODS:
        p = builtin_pipeline(f"hybrid+llm-{m}")
        assert p.rerank is not None
        llm = p.rerank.llm.model_copy(
            update={"backend": args.backend, "model": args.model, "cache": False}
        )
        rr = p.rerank.model_copy(update={"top_n": args.top_n, "llm": llm})
        pipelines.append(p.model_copy(update={"rerank": rr}))
    cfg = ExperimentConfig(
        dataset=args.dataset,
        protocol={"name": "cold-start", "n_users": args.users},
        seeds=[args.seed],
        metrics=["hr@10", "ndcg@10", "unique@10"],
        pipelines=pipelines,
    )
    result = run_experiment(cfg)
    rows = {r.pipeline: r for r in result.results}
    head = f"{'pipeline':26}{'s/user':>8}{'calls/user':>11}{'prompt tok':>11}" \
           f"{'gen tok':>9}{'invalid':>8}{'ndcg@10':>9}{'hr@10':>7}"  # fmt: skip
    print(f"{args.users} cold-start users, top {args.top_n} of the hybrid pool, {args.backend}")
    print(head)
    for name, r in rows.items():
        m = r.metrics
        print(
            f"{name:26}{m['latency_ms_per_user'] / 1000:>8.2f}{m['llm_calls_per_user']:>11.1f}"
            f"{m['prompt_tokens_per_user']:>11.0f}{m['completion_tokens_per_user']:>9.0f}"
            f"{m['invalid_rate']:>8.2f}{m['ndcg@10']:>9.3f}{m['hr@10']:>7.3f}"
        )
    verb = rows["hybrid+llm-verbalizer"].metrics
    for m in ("permutation", "pointwise"):
        other = rows[f"hybrid+llm-{m}"].metrics
        ratio = other["latency_ms_per_user"] / verb["latency_ms_per_user"]
        print(f"verbalizer is {ratio:.1f}x faster per user than {m}")
    tokens = sum(verb[k] for k in ("prompt_tokens_per_user", "completion_tokens_per_user"))
    print(f"verbalizer throughput: {tokens / (verb['latency_ms_per_user'] / 1000):.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=2)


if __name__ == "__main__":
    main()

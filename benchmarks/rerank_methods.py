"""LLM rerankers side by side on the same users: cost and quality in one run.

Verbalizer (one forward pass), permutation generation (RankGPT, window 20, step 10) and
pointwise yes/no, each reranking the same hybrid pool's top 20 for the same cold-start
users, with the answer cache off so every call is really made. Prints seconds, LLM calls
and tokens per user, NDCG@10 against the input order, and the ratios between methods.

``--backends llamacpp,hf`` runs every method on each back-end in the same run: a CPU
scores a prompt and generates text at very different relative speeds per back-end
(llama.cpp generates 5x faster, transformers scores prompts 1.6x faster), so the ratios are
printed per back-end and for each method on its fastest one.

    python benchmarks/rerank_methods.py --users 20 --backends llamacpp,hf
"""

from __future__ import annotations

import argparse
import json

from recfunnel.core.machine import describe, require_quiet
from recfunnel.evaluate.config import ExperimentConfig
from recfunnel.evaluate.runner import run_experiment
from recfunnel.pipeline import builtin_pipeline

METHODS = ("verbalizer", "permutation", "pointwise")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--backends", default="llamacpp", help="comma-separated back-ends")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", default=None)
    ap.add_argument("--busy-ok", action="store_true", help="measure on a busy machine")
    args = ap.parse_args()
    machine = require_quiet(args.busy_ok)
    print(describe(machine))

    backends = args.backends.split(",")
    pipelines = [builtin_pipeline("hybrid")]
    for backend in backends:
        for m in METHODS:
            p = builtin_pipeline(f"hybrid+llm-{m}")
            rerank = p.stages[-1]
            llm = rerank.llm.model_copy(
                update={"backend": backend, "model": args.model, "cache": False}
            )
            rr = rerank.model_copy(update={"top_n": args.top_n, "llm": llm})
            name = f"{m}/{backend}"
            pipelines.append(p.model_copy(update={"name": name, "stages": [*p.stages[:-1], rr]}))
    cfg = ExperimentConfig(
        dataset=args.dataset,
        protocol={"name": "cold-start", "n_users": args.users},
        seeds=[args.seed],
        metrics=["hr@10", "ndcg@10", "unique@10"],
        pipelines=pipelines,
    )
    result = run_experiment(cfg)
    rows = {r.pipeline: r.metrics for r in result.results}
    head = f"{'pipeline':26}{'s/user':>8}{'calls/user':>11}{'prompt tok':>11}" \
           f"{'gen tok':>9}{'invalid':>8}{'ndcg@10':>9}{'hr@10':>7}"  # fmt: skip
    print(f"{args.users} cold-start users, top {args.top_n} of the hybrid pool")
    print(head)
    for name, m in rows.items():
        print(
            f"{name:26}{m['latency_ms_per_user'] / 1000:>8.2f}{m['llm_calls_per_user']:>11.1f}"
            f"{m['prompt_tokens_per_user']:>11.0f}{m['completion_tokens_per_user']:>9.0f}"
            f"{m['invalid_rate']:>8.2f}{m['ndcg@10']:>9.3f}{m['hr@10']:>7.3f}"
        )
    seconds = {n: m["latency_ms_per_user"] / 1000 for n, m in rows.items() if "/" in n}
    for backend in backends:
        verb = rows[f"verbalizer/{backend}"]
        for m in ("permutation", "pointwise"):
            ratio = seconds[f"{m}/{backend}"] / seconds[f"verbalizer/{backend}"]
            print(f"{backend}: verbalizer is {ratio:.1f}x faster per user than {m}")
        tokens = verb["prompt_tokens_per_user"] + verb["completion_tokens_per_user"]
        print(f"{backend}: verbalizer {tokens / seconds[f'verbalizer/{backend}']:.0f} tokens/s")
    if len(backends) > 1:
        fastest = {m: min((seconds[f"{m}/{b}"], b) for b in backends) for m in METHODS}
        verb_s, verb_b = fastest["verbalizer"]
        for m in ("permutation", "pointwise"):
            other_s, other_b = fastest[m]
            print(f"fastest back-end each: verbalizer ({verb_b}, {verb_s:.2f} s) is "
                  f"{other_s / verb_s:.1f}x faster per user than {m} ({other_b}, "
                  f"{other_s:.2f} s)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, **result.to_json()}, f, indent=2)


if __name__ == "__main__":
    main()

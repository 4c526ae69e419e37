"""What the LLM features cost per user, beside today's verbalizer reranker, in one run.

For the same cold-start users and the same top 20 of the hybrid pool, with the answer
cache off so every call is really made, this times:

- ``verbalizer``: today's reranker (one listing in the input order, one forward pass);
- ``llm-features/<back-end>``: the feature stage (``shuffles`` listings for the verbalizer
  score plus one yes/no prompt per candidate), on each back-end asked for; ``hf-bf16``
  runs transformers in bfloat16 with the shared history prefix run once per user;
- ``ltr2``: the second LambdaRank of configs/cold-start-stacked.toml (it starts from its
  input's scores and learns corrections from the LLM features; its ``predict`` per user,
  fitted on ``--valid`` validation users' features).

It prints seconds per user, prompt tokens per user and the ratio to the verbalizer, and
refuses to start on a busy machine (``--busy-ok`` measures anyway and says so).

    python benchmarks/llm_features_cost.py --users 20 --backends llamacpp,hf,hf-bf16
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from recfunnel.core.machine import describe, require_quiet
from recfunnel.data.load import load_dataset
from recfunnel.data.splits import make_split
from recfunnel.pipeline import Funnel, builtin_pipeline
from recfunnel.pipeline.config import PipelineConfig

BACKENDS: dict[str, dict[str, Any]] = {
    "llamacpp": {"backend": "llamacpp", "prefix_cache": True},
    "hf": {"backend": "hf", "prefix_cache": True},
    "hf-bf16": {"backend": "hf", "prefix_cache": True, "dtype": "bfloat16"},
}


def timed_stage(split: Any, data: Any, stages: list[dict[str, Any]], seed: int) -> dict:
    """Fits a hybrid head plus ``stages`` and runs the test users once, one user at a time,
    as a server would: the last stage's seconds, tokens and invalid outputs per user."""
    hybrid = [s.model_dump() for s in builtin_pipeline("hybrid").stages]
    pipe = PipelineConfig.model_validate({"name": "bench", "stages": [*hybrid, *stages]})
    funnel = Funnel(pipe, seed).fit(split.train, data.catalog)
    funnel.tune(split)
    last, name = funnel.stages_[-1], funnel.names_[-1]
    seconds, tokens, invalid, outputs = [], 0, 0, 0
    for req in split.test.requests:
        trace = funnel.run([req], 20)
        seconds.append(trace.timings[name])
        st = last.stats()
        if hasattr(st, "prompt_tokens"):
            tokens += st.prompt_tokens
            invalid += st.invalid_outputs
            outputs += st.outputs
    n = len(seconds)
    return {"s_per_user": float(np.mean(seconds)), "s_p95": float(np.percentile(seconds, 95)),
            "prompt_tokens_per_user": tokens / n, "invalid_rate": invalid / max(outputs, 1),
            "users": n}  # fmt: skip


def features(shuffles: int, llm: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "llm-features", "top_n": 20, "shuffles": shuffles,
            "llm": {"cache": False, **llm}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--valid", type=int, default=20, help="validation users for ltr2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shuffles", type=int, default=2)
    ap.add_argument("--backends", default="llamacpp,hf,hf-bf16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--busy-ok", action="store_true", help="measure on a busy machine")
    args = ap.parse_args()
    machine = require_quiet(args.busy_ok)

    data = load_dataset(args.dataset)
    split = make_split(data, "cold-start", args.seed, n_users=args.users, n_valid=args.valid)
    rows: dict[str, dict] = {}
    verb = {"kind": "verbalizer", "top_n": 20, "llm": {"cache": False}}
    rows["verbalizer"] = timed_stage(split, data, [verb], args.seed)
    for name in args.backends.split(","):
        feats = features(args.shuffles, BACKENDS[name])
        rows[f"llm-features/{name}"] = timed_stage(split, data, [feats], args.seed)
    fastest = min((r["s_per_user"], n) for n, r in rows.items() if n.startswith("llm-features"))
    best = BACKENDS[fastest[1].split("/")[1]]
    ltr2 = {
        "kind": "ltr",
        "top_n": 20,
        "features": ["stages"],
        "boost_from_input": True,
        "cv_folds": 5,
    }
    rows["ltr2"] = timed_stage(split, data, [features(args.shuffles, best), ltr2], args.seed)

    print(describe(machine))
    print(
        f"{args.users} cold-start users of {args.dataset}, top 20 of the hybrid pool, "
        "answer cache off"
    )
    print(f"{'stage':26}{'s/user':>9}{'p95 s':>8}{'prompt tok':>11}{'invalid':>9}{'× verb':>8}")
    base = rows["verbalizer"]["s_per_user"]
    for name, r in rows.items():
        print(f"{name:26}{r['s_per_user']:>9.3f}{r['s_p95']:>8.3f}"
              f"{r['prompt_tokens_per_user']:>11.0f}{r['invalid_rate']:>9.3f}"
              f"{r['s_per_user'] / base:>8.2f}")  # fmt: skip
    print(f"ltr2: {rows['ltr2']['s_per_user'] * 1000:.2f} ms per user")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

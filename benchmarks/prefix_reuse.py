"""Shuffled candidate orders with and without llama.cpp prefix (KV-cache) reuse.

The verbalizer scores each user's top 20 in k orders (input + k−1 shuffles) against
position bias. The k prompts share the system text and the user's history; with
``prefix_cache`` on, llama.cpp keeps that prefix's KV cache and evaluates only the
candidate part again. For the same cold-start users this prints the seconds and the
tokens evaluated per user for one order (a full pass), k orders without reuse, and k
orders with reuse, against the bound "one full pass + (k−1) passes over the candidate
part"; and the tokens/s of the full pass (this machine's forward-pass rate).

    python benchmarks/prefix_reuse.py --users 20 --orders 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from recfunnel.core.machine import describe, require_quiet
from recfunnel.data.load import load_dataset
from recfunnel.data.splits import make_split
from recfunnel.llm.base import LLMConfig
from recfunnel.llm.llamacpp import LlamaCppLLM
from recfunnel.pipeline import Funnel, builtin_pipeline
from recfunnel.stages.rerank.prompts import verbalizer_prompt
from recfunnel.stages.text import PromptStyle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--orders", type=int, default=4)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--busy-ok", action="store_true", help="measure on a busy machine")
    args = ap.parse_args()
    machine = require_quiet(args.busy_ok)
    print(describe(machine))

    data = load_dataset("ml-latest-small")
    split = make_split(data, "cold-start", args.seed, n_users=args.users)
    funnel = Funnel(builtin_pipeline("hybrid"), args.seed).fit(split.train, data.catalog)
    heads = funnel.run(split.test.requests, args.top_n).final.items
    style = PromptStyle(noun=data.catalog.noun)
    rng = np.random.default_rng(args.seed)
    prompts = []  # per user: k prompts, input order first
    for req, head in zip(split.test.requests, heads, strict=True):
        orders = [np.arange(len(head))] + [rng.permutation(len(head)) for _ in
                                           range(args.orders - 1)]  # fmt: skip
        prompts.append([verbalizer_prompt(data.catalog, req.history, list(head[o]), style)[0]
                        for o in orders])  # fmt: skip
    labels = [chr(ord("A") + j) for j in range(args.top_n)]

    def run(reuse: bool, k: int) -> tuple[float, int, int]:
        """(seconds per user, tokens evaluated per user, prompt tokens per user)."""
        llm = LlamaCppLLM(LLMConfig(cache=False, prefix_cache=reuse))
        evaluated = 0
        inner = llm._eval_with_prefix_reuse

        def counting(tokens: list[int]) -> int:
            nonlocal evaluated
            n = inner(tokens)
            evaluated += n
            return n

        llm._eval_with_prefix_reuse = counting  # type: ignore[method-assign]
        llm.option_logprobs(prompts[0][0], labels)  # warm the model, then reset the counters
        llm._eval_with_prefix_reuse(llm.tokenize("reset"))
        evaluated = 0
        t0 = time.perf_counter()
        for user in prompts:
            for p in user[:k]:
                llm.option_logprobs(p, labels)
        seconds = time.perf_counter() - t0
        total = sum(len(llm.tokenize(llm.render(p))) for user in prompts for p in user[:k])
        return seconds / len(prompts), evaluated // len(prompts), total // len(prompts)

    probe = LlamaCppLLM(LLMConfig(cache=False))
    shared, full = [], []
    for user in prompts:
        toks = [probe.tokenize(probe.render(p)) for p in user]
        n = min(len(t) for t in toks)
        first_diff = min(
            next((i for i in range(n) if t[i] != toks[0][i]), n) for t in toks[1:]
        ) if len(toks) > 1 else n  # fmt: skip
        shared.append(first_diff)
        full.append(len(toks[0]))
    P, H, k = float(np.mean(full)), float(np.mean(shared)), args.orders
    one_s, one_tok, _ = run(False, 1)
    k_s, k_tok, _ = run(False, k)
    r_s, r_tok, _ = run(True, k)
    bound = P + (k - 1) * (P - H)
    out = {
        "users": len(prompts), "orders": k, "prompt_tokens": P, "shared_prefix_tokens": H,
        "one_order_s": one_s, "k_orders_s": k_s, "k_orders_reuse_s": r_s,
        "one_order_tokens": one_tok, "k_orders_tokens": k_tok, "k_orders_reuse_tokens": r_tok,
        "bound_tokens": bound, "forward_tokens_per_s": one_tok / one_s,
    }  # fmt: skip
    print(f"{len(prompts)} users, top {args.top_n}, {k} orders; prompt {P:.0f} tokens, of which "
          f"{H:.0f} shared by the orders (history + instructions)")  # fmt: skip
    print(f"{'':28}{'s/user':>8}{'tokens evaluated/user':>24}")
    print(f"{'1 order (full pass)':28}{one_s:>8.2f}{one_tok:>24}")
    print(f"{f'{k} orders, no reuse':28}{k_s:>8.2f}{k_tok:>24}")
    print(f"{f'{k} orders, prefix reuse':28}{r_s:>8.2f}{r_tok:>24}")
    print(f"bound (1 full + {k - 1} candidate parts): {bound:.0f} tokens = {bound / P:.2f} passes; "
          f"measured with reuse: {r_tok / P:.2f} passes of tokens, {r_s / one_s:.2f}× one "
          f"pass in time (no reuse: {k_s / one_s:.2f}×)")  # fmt: skip
    print(f"forward rate here: {one_tok / one_s:.0f} tokens/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, **out}, indent=1))


if __name__ == "__main__":
    main()

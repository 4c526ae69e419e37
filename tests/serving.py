"""A service on real ml-latest-small with a scripted LLM (fast, and its answers known), a
way to send the app a body chunk by chunk, and the real ``recfunnel serve`` on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tomli_w

from recfunnel.serve.config import ServeConfig
from recfunnel.serve.service import Service
from scripted import ScriptedLLM


def reverse_order(prompt: str, options) -> np.ndarray:
    """The verbalizer prefers the last-listed candidate; the chat picks `recommend`."""
    if "What should you do next?" in prompt:
        letters = dict(re.findall(r"^([A-Z])\. (\w+):", prompt, flags=re.M))
        return np.array([1.0 if letters.get(o) == "recommend" else 0.0 for o in options])
    return np.arange(len(options), dtype=float)


LLM_PATH = {
    "name": "routed",
    "route": {"cold": "hybrid+llm-verbalizer", "warm": "cf", "threshold": 20},
}
"""The LLM on the cold path: what these tests drive (the served default's learned ranker
is tuned at start-up, which takes minutes; tests/serve/test_service.py serves a small one)."""


def make_service(data, llm=None, **config) -> Service:
    config = {"warmup": True, "rate_limit": None, "pipeline": LLM_PATH, **config}
    return Service(
        ServeConfig(**config), dataset=data, llm=llm or ScriptedLLM(logprobs=reverse_order)
    )


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    pulled: int
    """Body chunks the app asked for before it answered."""

    def json(self) -> Any:
        return json.loads(self.body)


def asgi_request(app, method: str, path: str, chunks: Iterable[bytes] = (), *,
                 headers: Sequence[tuple[str, str]] = (),
                 client: tuple[str, int] = ("127.0.0.1", 50000)) -> Reply:  # fmt: skip
    """One request straight into the ASGI app, its body handed over one chunk per
    ``receive()`` with no Content-Length, as a chunked body arrives (the test client
    reads a body whole first); counts the chunks the app took before answering."""
    source = iter(chunks)
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": client, "server": ("127.0.0.1", 8000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in
                    [("host", "127.0.0.1"), ("content-type", "application/json"), *headers]],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return Reply(start["status"], head, body, pulled)


Served = tuple[str, "subprocess.Popen[bytes]"]


@contextmanager
def served(
    config: dict[str, Any], tmp: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """``recfunnel serve`` (the real command) with ``config`` (written as TOML) on a free
    loopback port: yields its URL and process once /healthz answers; stops it, workers
    and all, at the end."""
    from servers import free_port, stop_server

    path = tmp / "serve.toml"
    path.write_text(tomli_w.dumps({"pipeline": LLM_PATH, **config}))
    port = free_port()
    exe = Path(sys.executable).with_name("recfunnel")
    cmd = [str(exe), "serve", "--config", str(path), "--port", str(port), *args]
    log = tmp / "serve.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while not _answers(url + "/healthz"):
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError(f"recfunnel serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, proc
    finally:
        stop_server(proc)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False

"""Faults around the service (issue 34, items 4 and 5): Redis stopped mid-run (SIGSTOP,
then SIGCONT) under one app and under two real workers, and slow clients holding
connections. Loopback only, bounded in requests and time."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from recfunnel.serve.app import create_app
from serving import make_service, served

LIGHT = {"pipeline": "cf", "warmup": False, "chat": {"decide": "rules"}}
KEY = {"Authorization": "Bearer fault-key"}


def test_a_stopped_redis_gets_503_and_a_degraded_healthz_then_recovers(movielens, own_redis):
    proc, url = own_redis
    app = create_app(make_service(movielens, storage=f"{url}/0", api_key="fault-key",
                                  rate_limit="1000/minute", **LIGHT))  # fmt: skip
    c = TestClient(app)
    assert c.get("/items/search", params={"q": "heat"}, headers=KEY).status_code == 200
    sid = c.post("/chat", json={"message": "I like comedy"}, headers=KEY).json()["session_id"]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        r = c.get("/items/search", params={"q": "heat"}, headers=KEY)
        first = time.perf_counter() - t0
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "storage (redis://127.0.0.1" in r.json()["detail"] and first < 3.0
        t0 = time.perf_counter()
        codes = [c.get("/items/search", params={"q": "x"}, headers=KEY).status_code
                 for _ in range(20)]  # fmt: skip
        assert codes == [503] * 20 and time.perf_counter() - t0 < 3.0  # refused at once
        assert c.get("/healthz").json() == {"status": "degraded", "degraded": ["storage"]}
        detail = c.get("/healthz", headers=KEY).json()
        assert detail["status"] == "degraded" and "not answering" in detail["storage"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    t0 = time.perf_counter()
    while c.get("/items/search", params={"q": "heat"}, headers=KEY).status_code != 200:
        assert time.perf_counter() - t0 < 10, "no recovery within 10 s"
        time.sleep(0.2)
    assert c.get("/healthz").json() == {"status": "ok"}
    goes_on = c.post("/chat", json={"message": "no horror", "session_id": sid}, headers=KEY)
    assert goes_on.status_code == 200 and goes_on.json()["turn"] == 2
    text = c.get("/metrics", headers=KEY).text
    assert 'recfunnel_storage_unavailable_total{use="limits"}' in text
    assert 'status="500"' not in text


def _hammer(url: str, stop: threading.Event, out: list[tuple[float, str, int]],
            limit: int) -> None:  # fmt: skip
    """Requests on fresh connections until ``stop`` or ``limit``: (time, what, status)."""
    n = 0
    with httpx.Client(base_url=url, timeout=15, trust_env=False) as c:
        while not stop.is_set() and n < limit:
            what = ("search", "chat", "healthz")[n % 3]
            try:
                if what == "search":
                    r = c.get("/items/search", params={"q": "heat"}, headers=KEY)
                elif what == "chat":
                    r = c.post("/chat", json={"message": "I like comedy"}, headers=KEY)
                else:
                    r = c.get("/healthz")
                    what = f"healthz:{r.json().get('status')}:{r.json().get('degraded')}"
                out.append((time.perf_counter(), what, r.status_code))
            except httpx.TransportError as exc:
                out.append((time.perf_counter(), f"{what}:{type(exc).__name__}", 0))
            n += 1
            time.sleep(0.02)


@pytest.mark.slow
def test_two_workers_ride_out_a_redis_stop(tmp_path, own_redis):
    """Two workers on one Redis; Redis stopped 3 s into the run for 5 s. Every answer is
    2xx, 4xx or 503 (never 500), /healthz says "degraded" naming the storage during the
    fault, and both the API and /healthz are back within 10 s of Redis' return."""
    proc, url = own_redis
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "RECFUNNEL_API_KEY": "fault-key"}
    config = {**LIGHT, "rate_limit": "100000/minute"}
    with served(config, tmp_path, "--workers", "2", "--storage", f"{url}/0", env=env) as (base, _):
        from test_workers import both_up

        try:
            both_up(base, metrics_dir)
        except AssertionError:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
        stop, out = threading.Event(), []
        threads = [threading.Thread(target=_hammer, args=(base, stop, out, 600)) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(3)
        stopped = time.perf_counter()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(proc.pid, signal.SIGCONT)
        resumed = time.perf_counter()
        time.sleep(10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        metrics = httpx.get(base + "/metrics", headers=KEY, timeout=10, trust_env=False).text
    log = (tmp_path / "serve.log").read_text()
    statuses = {s for _, _, s in out}
    assert statuses <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    during = [(w, s) for t, w, s in out if stopped + 1.5 < t < resumed]
    assert ("healthz:degraded:['storage']", 200) in during
    assert not [w for w, s in during if w.startswith("search") and s == 200]
    after = [(t - resumed, w, s) for t, w, s in out if t > resumed]
    ok_search = min(t for t, w, s in after if w == "search" and s == 200)
    ok_health = min(t for t, w, s in after if w == "healthz:ok:None")
    assert ok_search < 10 and ok_health < 10, (ok_search, ok_health)
    tail = [(w, s) for t, w, s in after if t > 10 - 3]  # the last seconds: all well again
    assert tail and all(s == 200 for _, s in tail), tail
    assert "Traceback" not in log and 'status="500"' not in metrics
    print(
        f"\nrecovered in {ok_search:.2f} s (API), {ok_health:.2f} s (/healthz); "
        f"{len(out)} requests; {sum(s == 503 for _, _, s in out)} × 503"
    )


@pytest.mark.slow
def test_slow_headers_and_bodies_are_cut_off_at_their_deadlines(tmp_path):
    """200 connections sending their request a byte every 2 s (head or body): each is
    closed (head) or answered 408 (body) at its deadline, and a normal request is served
    all the while."""
    config = {**LIGHT, "header_timeout_s": 2.0, "body_timeout_s": 2.0, "max_connections": 400}
    with served(config, tmp_path) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        socks = []
        t0 = time.perf_counter()
        for n in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if n % 2:  # a head that never ends
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            else:  # a body that trickles
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
            socks.append(s)
        served_ms = []
        for _ in range(5):
            t1 = time.perf_counter()
            assert httpx.get(base + "/healthz", timeout=5, trust_env=False).status_code == 200
            served_ms.append(1000 * (time.perf_counter() - t1))
            time.sleep(0.2)
        answers: list[bytes] = []
        for s in socks:
            s.settimeout(max(0.1, 8 - (time.perf_counter() - t0)))
            try:
                answers.append(s.recv(200))
            except TimeoutError:
                answers.append(b"still open")
            s.close()
        closed_s = time.perf_counter() - t0
    heads, bodies = answers[1::2], answers[0::2]
    assert all(a == b"" for a in heads), {a[:20] for a in heads}  # closed, no answer
    assert all(a.startswith(b"HTTP/1.1 408") for a in bodies), {a[:20] for a in bodies}
    assert closed_s < 8 and max(served_ms) < 2000, (closed_s, served_ms)
    print(
        f"\n200 slow connections all cut off within {closed_s:.1f} s; a normal request "
        f"took {max(served_ms):.0f} ms at most meanwhile"
    )
    Path(tmp_path / "ok").write_text("")

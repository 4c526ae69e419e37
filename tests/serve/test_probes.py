"""The issue's black-box probes, run as they were against the real ``recfunnel serve`` on
loopback, each with the status it gets now (printed as a table, and kept under
test-artifacts/hostile-probes.txt). Two servers: one open (no keys), one with two keys."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from serving import served

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LIGHT = {"pipeline": "cf", "warmup": False, "chat": {"decide": "rules"}}
JSON = {"content-type": "application/json"}
LIMIT = 1100
"""Requests per minute per client on the open server: room for a 1000-session flood."""


class Probes:
    """Rows of (defect, probe, wanted, got); the table is the report."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def check(self, defect: str, probe: str, wanted: object, got: object) -> None:
        self.rows.append((defect, probe, str(wanted), str(got)))

    def table(self) -> str:
        lines = [f"{'defect':7} {'wanted':>22} {'got':>22}  probe", "-" * 110]
        lines += [f"{d:7} {w:>22} {g:>22}  {p}" for d, p, w, g in self.rows]
        return "\n".join(lines)

    def failures(self) -> list[tuple[str, str, str, str]]:
        return [r for r in self.rows if r[2] != r[3]]


def client_from(url: str, source: str, **kw) -> httpx.Client:
    """A client whose packets come from ``source`` (any 127.x address is this machine):
    one loopback address per simulated client."""
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=url, transport=transport, timeout=30, trust_env=False, **kw)


def chunked_upload(url: str, total: int, chunk: int = 65_536) -> tuple[int, int]:
    """POST a chunked body of ``total`` bytes, a chunk every 10 ms, until the server
    answers: (status, bytes sent before the answer came)."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sent = 0
    try:
        while sent < total and not select.select([sock], [], [], 0.01)[0]:
            sock.sendall(b"%x\r\n" % chunk + b"x" * chunk + b"\r\n")
            sent += chunk
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed: the answer is waiting to be read
    answer = sock.recv(4096)
    sock.close()
    return int(answer.split(b" ", 2)[1]), sent


def keep_alive_statuses(url: str, bodies: list[bytes]) -> tuple[list[int], bool]:
    """The bodies posted on one connection: their statuses, and whether it stayed open."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    statuses, socks = [], set()
    for body in bodies:
        conn.request("POST", "/recommend", body=body, headers=JSON)
        socks.add(id(conn.sock))
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    return statuses, len(socks) == 1


def open_server_probes(url: str, server: psutil.Process, p: Probes) -> None:
    bodies = [
        b'{"history":[1],"k":NaN}',
        b'{"text":"funny \\ud800 film"}',
        b'{"history":[1],"k":Infinity}',
        b'{"user_id":NaN}',
        b'{"history":[1, NaN]}',
    ]
    statuses, kept = keep_alive_statuses(url, bodies)
    for body, status in zip(bodies, statuses, strict=True):
        p.check("1", f"curl /recommend --data-binary '{body.decode()}'", 422, status)
    p.check("1", "... all on one keep-alive connection: still open", True, kept)

    rss = server.memory_info().rss
    status, sent = chunked_upload(url, 10 * 2**20)
    grew = (server.memory_info().rss - rss) / 2**20
    p.check("2", "chunked 10 MiB POST /recommend", 413, status)
    p.check("2", f"... sent before the answer: {sent // 1024} KiB (< 1 MiB)", True, sent < 2**20)
    p.check("2", f"... server memory grew {grew:.1f} MiB (< 10)", True, grew < 10)

    with client_from(url, "127.0.0.1") as c, client_from(url, "127.0.0.5") as flood:
        chosen = c.post("/chat", json={"message": "hi", "session_id": "1"})
        p.check("3", "POST /chat {session_id: '1'} (a client-chosen id)", 404, chosen.status_code)
        first = c.post("/chat", json={"message": "I loved Toy Story"}).json()
        p.check("3", "... the server's id is 192 random bits", 32, len(first["session_id"]))
        for _ in range(1000):  # another client's one-message sessions
            flood.post("/chat", json={"message": "hello"})
        goes_on = c.post("/chat", json={"message": "no horror", "session_id": first["session_id"]})
        p.check(
            "3",
            "... 1000 one-message sessions later, it goes on: turn",
            2,
            goes_on.json().get("turn"),
        )
        size = len(goes_on.content)
        p.check("3", f"... its answer: {size} B (< 8 KB)", True, size < 8_000)

    with client_from(url, "127.0.0.2") as c:  # its own address: its own bucket
        codes = [
            c.get(
                "/items/search",
                params={"q": "heat"},
                headers={"Authorization": f"Bearer made-up-{n}", "X-Forwarded-For": f"10.9.8.{n}"},
            ).status_code
            for n in range(LIMIT + 3)
        ]
    p.check(
        "4",
        f"{LIMIT + 3} × a new made-up Authorization and X-Forwarded-For",
        f"{LIMIT} × 200, 3 × 429",
        f"{codes.count(200)} × 200, {codes.count(429)} × 429",
    )


def keyed_server_probes(url: str, p: Probes) -> None:
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    with client_from(url, "127.0.0.1") as c:
        sid = c.post("/chat", json={"message": "I loved Heat"}, headers=a).json()["session_id"]
        stolen = c.post("/chat", json={"message": "hi", "session_id": sid}, headers=b)
        p.check("3", "another key's session id", 404, stolen.status_code)
        health = c.get("/healthz")
        p.check("7", "GET /healthz without a key", '{"status":"ok"}', health.text)
        p.check(
            "7",
            "GET /healthz with a key: detail",
            True,
            "breaker" in c.get("/healthz", headers=a).json(),
        )
    with client_from(url, "127.0.0.3") as c:
        codes = [
            c.get("/metrics", headers={"Authorization": f"Bearer guess-{n}"}).status_code
            for n in range(300)
        ]
    p.check("5", "300 wrong keys from one address: 401 ×", 10, codes.count(401))
    p.check("5", "... then 429 ×", 290, codes.count(429))
    with client_from(url, "127.0.0.4") as c:
        lower = c.get("/metrics", headers={"Authorization": "bearer key-a"})
        p.check("5", "Authorization: bearer key-a (lowercase scheme)", 200, lower.status_code)
        spent = [c.get("/items/search", params={"q": "h"}, headers=a).status_code for _ in range(5)]
        p.check("5", "key-a until its bucket (5/minute) is spent: last", 429, spent[-1])
        other = c.get("/items/search", params={"q": "h"}, headers=b)
        p.check("5", "... then key-b: its own bucket", 200, other.status_code)
        metrics = c.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
    p.check("5", "the scraper's key is not limited", True, "recfunnel_requests_total" in metrics)
    for needle in (
        'status="401"',
        'status="404"',
        'status="429"',
        "recfunnel_llm_errors_total",
        "recfunnel_llm_timeouts_total",
        "recfunnel_llm_short_circuits_total",
    ):
        p.check("6", f"/metrics has {needle}", True, needle in metrics)


def test_the_issues_probes_against_recfunnel_serve(tmp_path):
    p = Probes()
    with served({**LIGHT, "rate_limit": f"{LIMIT}/minute"}, tmp_path) as (url, proc):
        time.sleep(0.5)
        open_server_probes(url, psutil.Process(proc.pid), p)
    keyed = {**LIGHT, "rate_limit": "5/minute", "metrics_key": "scrape"}
    (tmp_path / "keyed").mkdir()
    env = {"RECFUNNEL_API_KEY": "key-a,key-b"}
    with served(keyed, tmp_path / "keyed", env=env) as (url, _):
        keyed_server_probes(url, p)
    table = p.table()
    print("\n" + table)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "hostile-probes.txt").write_text(table + "\n")
    assert not p.failures(), json.dumps(p.failures(), indent=1)

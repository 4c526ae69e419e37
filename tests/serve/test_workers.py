"""Several processes, one service: ``recfunnel serve --workers 2`` on a real redis-server
shares the rate limit, the chat sessions and the counters; the answer cache takes several
writers at once."""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from recfunnel.llm.cache import AnswerCache
from serving import served

pytestmark = pytest.mark.slow
LIGHT = {"pipeline": "cf", "warmup": False, "chat": {"decide": "rules"}}


def fresh(url: str, method: str, path: str, **kw) -> httpx.Response:
    """One request on a new connection: the kernel hands it to either worker."""
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        return c.request(method, path, **kw)


def served_by_worker(metrics_dir: Path, endpoint: str) -> dict[str, float]:
    """Answers at ``endpoint`` each worker process counted (its own file of values)."""
    out = {}
    for f in metrics_dir.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(f))
        out[f.name] = sum(
            v for key, v, *_ in values if "recfunnel_requests_total" in key and endpoint in key
        )
    return out


def both_up(url: str, metrics_dir: Path) -> None:
    """Waits until each worker has answered: the first answers /healthz while the second
    may still be fitting its pipeline."""
    t0 = time.perf_counter()
    while len([n for n in served_by_worker(metrics_dir, "/healthz").values() if n]) < 2:
        assert time.perf_counter() - t0 < 120, "the second worker never answered"
        fresh(url, "GET", "/healthz")


def test_two_workers_share_limits_sessions_and_counters(tmp_path, redis_url):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    config = {**LIGHT, "rate_limit": "44/minute", "metrics_key": "scrape"}
    with served(config, tmp_path, "--workers", "2", "--storage", redis_url, env=env) as (url, _):
        both_up(url, metrics_dir)
        with ThreadPoolExecutor(4) as pool:
            codes = list(
                pool.map(
                    lambda _: fresh(url, "GET", "/items/search", params={"q": "heat"}).status_code,
                    range(36),
                )
            )
        sid, turns = None, []
        for n in range(5):  # one conversation, each turn on a new connection
            body = {
                "message": ["hi", "I like comedy", "I loved Toy Story", "no horror", "the 90s"][n],
                **({"session_id": sid} if sid else {}),
            }
            r = fresh(url, "POST", "/chat", json=body)
            assert r.status_code == 200, r.text
            sid = r.json()["session_id"]
            turns.append(r.json()["turn"])
        extra = [
            fresh(url, "GET", "/items/search", params={"q": "heat"}).status_code for _ in range(6)
        ]
        scrape = {"Authorization": "Bearer scrape"}  # the scraper: never rate-limited
        metrics = fresh(url, "GET", "/metrics", headers=scrape).text
    assert sorted(codes) == [200] * 36 and turns == [1, 2, 3, 4, 5]
    assert extra == [200] * 3 + [429] * 3  # 36 + 5 + 3 = 44: one bucket for both workers
    by_worker = served_by_worker(metrics_dir, "/items/search")
    assert len([n for n in by_worker.values() if n > 0]) == 2, by_worker  # both served
    assert sum(by_worker.values()) == 42
    assert 'recfunnel_requests_total{endpoint="/items/search",status="200"} 39.0' in metrics
    assert 'recfunnel_requests_total{endpoint="/items/search",status="429"} 3.0' in metrics
    assert not re.search(r'status="5\d\d"', metrics)


def test_workers_need_a_shared_storage(tmp_path):
    from typer.testing import CliRunner

    from recfunnel.cli import app

    res = CliRunner().invoke(app, ["serve", "--workers", "2", "--storage", "memory://"])
    assert res.exit_code != 0 and "redis://" in res.output


def _write(path: str, worker: int, start) -> None:
    start.wait()
    cache = AnswerCache(Path(path))
    for i in range(200):
        cache.put(f"{worker}-{i}", {"worker": worker, "i": i})
        cache.put(f"shared-{i}", {"i": i})  # the same keys from every writer
    cache.close()


def test_the_answer_cache_takes_several_writers_at_once(tmp_path):
    path = tmp_path / "answers.sqlite"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_write, args=(str(path), w, start)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()  # every writer opens and writes the new file at once
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    cache = AnswerCache(path)
    assert len(cache) == 4 * 200 + 200
    assert cache.get("3-199") == {"worker": 3, "i": 199} and cache.get("shared-7") == {"i": 7}
    assert not list(tmp_path.glob("*.corrupt-*"))

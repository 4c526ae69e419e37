"""Fixtures: ml-latest-small, one scripted-LLM service per test module, and a real
redis-server on a free loopback port (started here, stopped at the end)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recfunnel.data.load import load_dataset
from servers import free_port
from serving import make_service


@pytest.fixture(scope="session")
def movielens(shared_data):
    return load_dataset("ml-latest-small", shared_data)


@pytest.fixture(scope="module")
def service(movielens):
    svc = make_service(movielens)
    yield svc
    svc.close()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of our own (no disk, loopback only) on a free port, once it answers:
    its process and ``redis://127.0.0.1:<port>``. A missing redis-server fails the test:
    `make test` installs it."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not installed: run `make test-tools` (apt-get install redis-server)"
        )
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(workdir), "--protected-mode", "yes"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}"
    with redis.Redis.from_url(url) as client:
        t0 = time.perf_counter()
        while True:
            try:
                client.ping()
                return proc, url
            except redis.ConnectionError:
                if proc.poll() is not None or time.perf_counter() - t0 > 15:
                    proc.kill()
                    pytest.fail(f"redis-server did not start (exit {proc.poll()})")
                time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>`` of a redis-server shared by the session's tests."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def own_redis(tmp_path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test alone (it may stop and resume it)."""
    proc, url = start_redis(tmp_path)
    try:
        yield proc, url
    finally:
        proc.kill()  # also ends a stopped one
        proc.wait(timeout=10)


@pytest.fixture()
def redis_url(redis_server) -> str:
    """The test's own empty database."""
    import redis

    with redis.Redis.from_url(redis_server) as r:
        r.flushall()
    return f"{redis_server}/0"

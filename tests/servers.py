"""Real servers for tests: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

Shared by the back-end tests and the reranker outage tests (importable because
pyproject's pytest ``pythonpath`` includes tests/).
"""

from __future__ import annotations

import functools
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

log = logging.getLogger(__name__)

KEY = "test-key-not-secret"
STARTUP_LIMIT_S = 60.0


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(gguf: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama-cpp-python's OpenAI server and wait (bounded) until it lists its model."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "recfunnel.llm.llamacpp_server",
        "--model", str(gguf), "--model_alias", "smollm2-135m",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--logits_all", "True", "--n_threads", "2",
        "--verbose", "False", *extra,
    ]  # fmt: skip
    out = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    base_url = f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    try:
        with httpx.Client(trust_env=False, timeout=2.0) as probe:
            while time.perf_counter() - t0 < STARTUP_LIMIT_S:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}")
                try:
                    if probe.get(f"{base_url}/models", headers=_auth(extra)).status_code == 200:
                        log.info("llama.cpp server up in %.2fs", time.perf_counter() - t0)
                        return proc, base_url
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"server not up after {STARTUP_LIMIT_S:.0f}s")
    except BaseException as exc:
        stop_server(proc)
        tail = log_path.read_text(errors="replace")[-2000:]
        pytest.fail(f"llama.cpp server failed to start: {exc}\n{tail}")


def _auth(args: tuple[str, ...]) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"} if "--api_key" in args else {}


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class FileServer:
    """A static file server in a thread; remembers the paths it was asked for. A path in
    ``cut`` is answered with its full Content-Length but only half its bytes, then the
    connection closes (a download cut halfway)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        self.cut: set[str] = set()
        requests, cut = self.requests, self.cut

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if self.path in cut:
                    body = (folder / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

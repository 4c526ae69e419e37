"""OpenAILLM against real servers on 127.0.0.1: llama-cpp-python's OpenAI server running
the bundled SmolLM2 GGUF, and a tiny scripted http.server for status codes a healthy LLM
server will not produce on demand (429, 503). No mocks: every request crosses a socket.

Needs llama-cpp-python's server extras (fastapi, uvicorn, sse-starlette, starlette-context,
pydantic-settings).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recfunnel.llm.base import LLMConfig, LLMUnavailable, Message
from recfunnel.llm.cache import AnswerCache
from recfunnel.llm.openai_compat import LLMRequestRejected, OpenAILLM
from servers import KEY, free_port, start_server, stop_server

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

KEY_ENV = "RECFUNNEL_TEST_OPENAI_KEY"
LETTERS = [chr(ord("A") + i) for i in range(20)]


# ---- helpers ------------------------------------------------------------------------------
def client(base_url: str, cache: AnswerCache | None = None, **kw: Any) -> OpenAILLM:
    cfg = LLMConfig(
        backend="openai",
        base_url=base_url,
        api_key_env=KEY_ENV,
        cache=cache is not None,
        timeout_s=kw.pop("timeout_s", 30.0),
        **kw,
    )
    return OpenAILLM(cfg, cache)


def ranking_prompt(tag: str = "", system: str = "You recommend movies.") -> list[Message]:
    items = " ".join(f"({c}) movie {i}" for i, c in enumerate(LETTERS))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Which movie fits best? {items} Answer with one letter.{tag}"},
    ]


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf() -> Path:
    from recfunnel.llm.models import resolve_gguf

    return resolve_gguf("smollm2-135m")


@pytest.fixture(scope="module")
def api_key() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        yield KEY


@pytest.fixture(scope="module")
def server(gguf: Path, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama.cpp server that requires the test API key."""
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    proc, base_url = start_server(gguf, log_path, "--api_key", api_key)
    try:
        yield base_url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def local_llm() -> Any:
    from recfunnel.llm.llamacpp import LlamaCppLLM

    return LlamaCppLLM(LLMConfig(cache=False, n_threads=2))


# ---- against the llama.cpp server -----------------------------------------------------------
def test_complete_returns_text_and_tokens_deterministically(server: str) -> None:
    """Greedy answers repeat when the server starts from the same state.

    llama.cpp re-evaluates only the last token of a prompt it has just seen (prefix reuse),
    and that single-token pass differs numerically from a full-prompt pass (up to ~0.15 in
    log-prob on this model), which can flip a near-tied greedy token. So an unrelated prompt
    runs in between: both calls then take the same full-prompt path.
    """
    llm = client(server)
    msgs = ranking_prompt()
    a = llm.complete(msgs, max_tokens=12, temperature=0.0)
    llm.complete([{"role": "user", "content": "Hello!"}], max_tokens=2)
    b = llm.complete(msgs, max_tokens=12, temperature=0.0)
    assert a.text.strip()
    assert a.prompt_tokens > 50
    assert 0 < a.completion_tokens <= 12
    assert (a.text, a.prompt_tokens, a.completion_tokens) == (
        b.text,
        b.prompt_tokens,
        b.completion_tokens,
    )
    assert not a.cached and not b.cached
    assert llm.http_attempts == 3  # cache off: every call reached the server
    assert llm.usage.calls == 3 and llm.usage.errors == 0


def test_option_logprobs_agree_with_local_llamacpp(server: str, local_llm: Any) -> None:
    """Same GGUF, same chat template, same llama.cpp: the same numbers.

    The prompt is one neither side has evaluated before, so both take the full-prompt path
    (see the determinism test for why a re-evaluated prompt can differ slightly). It has no
    assistant prefix: llama-cpp-python's server ignores ``continue_final_message`` and closes
    the assistant turn, so a prefixed prompt is a different prompt there.
    """
    remote = client(server)
    msgs = ranking_prompt(system="Pick the film a horror fan would enjoy most.")
    http = remote.option_logprobs(msgs, LETTERS)
    local = local_llm.option_logprobs(msgs, LETTERS)
    assert http.logprobs.shape == (20,)
    assert np.all(np.isfinite(http.logprobs)) and np.all(http.logprobs <= 0)
    assert int(http.logprobs.argmax()) == int(local.logprobs.argmax())
    assert http.prompt_tokens == local.prompt_tokens  # same template, same tokens
    # Options outside the server's top-k share the floor; the rest are the same numbers.
    floor = http.logprobs.min()
    scored = http.logprobs > floor if http.missing else np.ones(20, dtype=bool)
    assert 0 <= http.missing < 20
    assert int((~scored).sum()) == http.missing
    np.testing.assert_allclose(http.logprobs[scored], local.logprobs[scored], atol=0.02)
    assert np.all(local.logprobs[~scored] <= local.logprobs[scored].min() + 0.02)

    # Latency of a 20-option call, HTTP vs in-process (distinct prompts: no answer cache).
    timings = {}
    for name, llm in (("http", remote), ("in-process", local_llm)):
        spent = []
        for i in range(3):
            t0 = time.perf_counter()
            llm.option_logprobs(ranking_prompt(f" #{i}"), LETTERS)
            spent.append(time.perf_counter() - t0)
        timings[name] = float(np.median(spent))
    log.info("20-option logprob call: http %.3fs, in-process %.3fs (median of 3)",
             timings["http"], timings["in-process"])  # fmt: skip


def test_complete_many_keeps_input_order_under_concurrency(server: str) -> None:
    # Prompts differ from their first word, so each is evaluated from the same shared prefix
    # (the chat template) whatever order the server takes them in.
    cities = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Delhi", "Quito"]
    prompts: list[list[Message]] = [
        [{"role": "user", "content": f"{city} is the capital of which country?"}] for city in cities
    ]
    serial = [client(server, concurrency=1).complete(p, max_tokens=8).text for p in prompts]
    assert len(set(serial)) > 1, "prompts must give different answers for the order to matter"
    client(server).complete([{"role": "user", "content": "Hello!"}], max_tokens=2)
    llm = client(server, concurrency=4)
    got = llm.complete_many(prompts, max_tokens=8)
    assert [c.text for c in got] == serial
    assert llm.http_attempts == 8
    scores = llm.option_logprobs_many([ranking_prompt(f" #{i}") for i in range(4)], LETTERS)
    assert [s.logprobs.shape for s in scores] == [(20,)] * 4


def test_second_identical_call_is_served_from_cache(server: str, tmp_path: Path) -> None:
    llm = client(server, AnswerCache(tmp_path / "answers.sqlite"))
    msgs = ranking_prompt()
    first = llm.complete(msgs, max_tokens=6)
    lp = llm.option_logprobs(msgs, LETTERS)
    sent = llm.http_attempts
    again = llm.complete(msgs, max_tokens=6)
    lp_again = llm.option_logprobs(msgs, LETTERS)
    assert llm.http_attempts == sent == 2
    assert again.cached and again.text == first.text
    assert lp_again.cached and np.array_equal(lp_again.logprobs, lp.logprobs)
    assert lp_again.missing == lp.missing
    assert llm.usage.cache_hits == 2 and llm.usage.calls == 4


def test_client_error_is_not_retried(server: str) -> None:
    llm = client(server, retries=3)
    too_long = [{"role": "user", "content": "movie " * 3000}]  # > n_ctx=2048 tokens
    t0 = time.perf_counter()
    with pytest.raises(LLMRequestRejected, match="HTTP 400"):
        llm.complete(too_long, max_tokens=4)
    assert llm.http_attempts == 1
    assert time.perf_counter() - t0 < 5.0  # no back-off sleeps
    assert llm.usage.errors == 1


def test_wrong_api_key_is_rejected_without_retry(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECFUNNEL_TEST_WRONG_KEY", "wrong")
    cfg = LLMConfig(backend="openai", base_url=server, api_key_env="RECFUNNEL_TEST_WRONG_KEY",
                    cache=False, retries=3)  # fmt: skip
    llm = OpenAILLM(cfg)
    with pytest.raises(LLMRequestRejected, match="HTTP 401"):
        llm.complete(ranking_prompt(), max_tokens=2)
    assert llm.http_attempts == 1


# ---- a server that dies mid-run -------------------------------------------------------------
@pytest.fixture
def stopped_server(
    gguf: Path, api_key: str, tmp_path: Path
) -> tuple[str, AnswerCache, OpenAILLM, list[Message]]:
    """A server that answered one call and was then terminated: (url, cache, client, msgs)."""
    proc, base_url = start_server(gguf, tmp_path / "server.log", "--api_key", api_key)
    try:
        cache = AnswerCache(tmp_path / "answers.sqlite")
        llm = client(base_url, cache, retries=1)
        msgs: list[Message] = [{"role": "user", "content": "Name a film."}]
        llm.complete(msgs, max_tokens=4)
    finally:
        stop_server(proc)
    return base_url, cache, llm, msgs


def test_server_stopped_mid_run_raises_unavailable(
    stopped_server: tuple[str, AnswerCache, OpenAILLM, list[Message]],
) -> None:
    base_url, _, llm, msgs = stopped_server
    assert llm.complete(msgs, max_tokens=4).cached  # answered before the server died
    sent = llm.http_attempts
    with pytest.raises(LLMUnavailable, match=r"127\.0\.0\.1") as info:
        llm.complete([{"role": "user", "content": "Name another film."}], max_tokens=4)
    assert base_url in str(info.value)
    assert not isinstance(info.value, LLMRequestRejected)
    assert llm.usage.errors == 1
    assert llm.http_attempts - sent == 2  # a try and one retry


def test_cache_answers_without_any_http_request(
    stopped_server: tuple[str, AnswerCache, OpenAILLM, list[Message]],
) -> None:
    base_url, cache, first, msgs = stopped_server
    other = client(base_url, cache, retries=0, timeout_s=1.0)  # same URL, nothing listens
    got = other.complete(msgs, max_tokens=4)
    assert got.cached
    assert got.text == first.complete(msgs, max_tokens=4).text
    assert other.http_attempts == 0
    assert other.usage.cache_hits == 1 and other.usage.errors == 0


# ---- retries, against a closed port and a scripted server -----------------------------------
def test_closed_port_raises_after_retries_with_backoff() -> None:
    port = free_port()
    llm = client(f"http://127.0.0.1:{port}/v1", retries=2, timeout_s=2.0)
    t0 = time.perf_counter()
    with pytest.raises(LLMUnavailable, match=f"127.0.0.1:{port}.*3 tries"):
        llm.complete(ranking_prompt(), max_tokens=4)
    elapsed = time.perf_counter() - t0
    assert llm.http_attempts == 3
    assert 1.4 <= elapsed < 10.0  # slept 0.5 s + 1 s (+ jitter) between the tries
    assert llm.usage.errors == 1


Reply = tuple[int, dict[str, str], dict[str, Any]]


class Scripted(ThreadingHTTPServer):
    """Answers POSTs with the next scripted (status, headers, body); records what it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "body": body,
                                         "auth": self.headers.get("Authorization")})  # fmt: skip
            status, headers, reply = (
                self.server.script.pop(0) if self.server.script else (500, {}, {"error": "done"})
            )
        data = json.dumps(reply).encode()
        self.send_response(status)
        for k, v in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("scripted server: " + format, *args)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    srv = Scripted()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_429_and_503_are_retried_honouring_retry_after(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proxy variables must not divert loopback calls (the client ignores the environment).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv(KEY_ENV, raising=False)
    scripted.script = [
        (503, {"Retry-After": "2"}, {"error": {"message": "loading model"}}),
        (429, {}, {"error": {"message": "slow down"}}),
        (200, {}, {"choices": [{"message": {"role": "assistant", "content": "Heat (1995)"}}]}),
    ]
    llm = client(scripted.url, retries=2, timeout_s=5.0)
    msgs = [*ranking_prompt(), {"role": "assistant", "content": "Answer: ("}]
    t0 = time.perf_counter()
    got = llm.complete(msgs, max_tokens=5, stop=["\n"])
    elapsed = time.perf_counter() - t0
    assert got.text == "Heat (1995)"
    assert got.completion_tokens == len("Heat (1995)") // 4  # no usage: estimated
    assert got.prompt_tokens > 0
    assert llm.http_attempts == len(scripted.requests) == 3
    # Retry-After 2 s, then the 1 s back-off; ignoring the header would take ~1.5 s.
    assert 2.9 <= elapsed < 6.0
    sent = scripted.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] is None
    body = sent["body"]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_tokens"] == 5 and body["stop"] == ["\n"] and body["seed"] == 0
    assert body["messages"] == msgs and body["model"] == "smollm2-135m"


def test_5xx_until_out_of_retries(scripted: Scripted) -> None:
    scripted.script = [(500, {}, {"error": {"message": "boom"}})] * 2
    llm = client(scripted.url, retries=1, timeout_s=5.0)
    with pytest.raises(LLMUnavailable, match="HTTP 500: boom"):
        llm.option_logprobs(ranking_prompt(), LETTERS)
    assert len(scripted.requests) == 2


def test_legacy_logprob_shape_and_missing_logprobs(scripted: Scripted) -> None:
    legacy = {
        "choices": [
            {"text": " B", "logprobs": {"top_logprobs": [{" B": -0.5, "A": -1.2, "B": -2.0}]}}
        ]
    }
    scripted.script = [
        (200, {}, legacy),
        (200, {}, {"choices": [{"message": {"content": "B"}, "logprobs": None}]}),
    ]
    llm = client(scripted.url, retries=0)
    got = llm.option_logprobs(ranking_prompt(), ["A", "B", "C"])
    np.testing.assert_allclose(got.logprobs, [-1.2, -0.5, -2.0 - np.log(2)])
    assert got.missing == 1
    sent = scripted.requests[0]["body"]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 20 and sent["max_tokens"] == 1
    assert "continue_final_message" not in sent
    with pytest.raises(LLMUnavailable, match="no top_logprobs"):
        llm.option_logprobs(ranking_prompt(" again"), ["A", "B", "C"])

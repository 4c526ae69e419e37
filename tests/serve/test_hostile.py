"""The seven defects black-box probes found, one test each, through the HTTP API only
(each failed on the code before the fix): malformed input, chunked bodies, sessions,
limit dodging, key guessing, counters, and /healthz."""

from __future__ import annotations

import itertools
import time

import pytest
from fastapi.testclient import TestClient

from recfunnel.llm.base import LLMUnavailable
from recfunnel.serve.app import create_app
from scripted import ScriptedLLM
from serving import asgi_request, make_service, reverse_order

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


def app_of(movielens, **config):
    return create_app(make_service(movielens, warmup=False, **config))


# 1. a lone surrogate, NaN or Infinity: 422 naming the field (was a 500 and a reset)
@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/recommend", b'{"history":[1],"k":NaN}', "k"),
        ("/recommend", b'{"history":[1],"k":Infinity}', "k"),
        ("/recommend", b'{"history":[1],"k":-Infinity}', "k"),
        ("/recommend", b'{"user_id":NaN}', "user_id"),
        ("/recommend", b'{"history":[1, NaN]}', "history.1"),
        ("/recommend", b'{"text":"funny \\ud800 film"}', "text"),
        ("/recommend", b'{"history":[1],"goal":"\\udfff"}', "goal"),
        ("/recommend", b'{"history":["funny \\ud800 film"]}', "history.0"),
        ("/recommend", b'{"user_id":"\\ud83d"}', "user_id"),
        ("/chat", b'{"message":"funny \\ud800 film"}', "message"),
        ("/chat", b'{"message":"hi","\\ud800":1}', "body"),  # a key: not a field
    ],
)
def test_surrogates_and_non_finite_numbers_get_a_422_naming_the_field(client, path, raw, field):
    r = client.post(path, content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    r.content.decode("ascii")  # an encodable body: every quoted character escaped
    fields = [e["field"] for e in r.json()["detail"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


def test_a_refusal_quotes_a_short_excerpt_never_the_body(client):
    big = "x" * 60_000
    for body in ({"history": [1], "colour": big}, {"text": big}, {"history": [big]}):
        r = client.post("/recommend", json=body)
        assert r.status_code == 422 and len(r.content) < 1_000, len(r.content)
        assert all(len(e.get("input", "")) <= 41 for e in r.json()["detail"])


# 2. the body limit holds for chunked bodies, refused before they are read whole
def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_whole(service):
    app = create_app(service)
    ten_mb = itertools.repeat(b"x" * 65_536, 160)
    r = asgi_request(app, "POST", "/recommend", ten_mb)
    assert r.status == 413 and "65536 bytes" in r.json()["detail"]
    assert r.pulled == 2  # 128 KiB read of 10 MiB, nothing echoed
    assert r.headers["connection"] == "close" and len(r.body) < 200
    ok = asgi_request(app, "POST", "/recommend", [b'{"user_id"', b": 1, ", b'"k": 3}'])
    assert ok.status == 200 and len(ok.json()["items"]) == 3  # a small chunked body is fine


# 3. sessions: made by the server only, one client's, and not evictable by another
def test_a_client_cannot_choose_read_or_evict_another_clients_session(movielens):
    app = app_of(movielens, api_keys=["key-a", "key-b"])
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    c = TestClient(app)
    assert c.post("/chat", json={"message": "hi", "session_id": "1"}, headers=a).status_code == 404
    first = c.post("/chat", json={"message": "I loved Toy Story, I like comedy"}, headers=a)
    sid = first.json()["session_id"]
    assert len(sid) >= 32 and first.json()["state"]["liked"] == ["Toy Story (1995)"]
    stolen = c.post("/chat", json={"message": "what did I like?", "session_id": sid}, headers=b)
    assert stolen.status_code == 404 and "Toy Story" not in stolen.text
    for _ in range(1000):  # one client's one-message sessions
        assert c.post("/chat", json={"message": "hello"}, headers=b).status_code == 200
    mine = c.post("/chat", json={"message": "no horror", "session_id": sid}, headers=a)
    assert mine.status_code == 200 and mine.json()["turn"] == 2
    assert mine.json()["state"]["liked"] == ["Toy Story (1995)"]


# 4. the rate limit's client is the verified key or the peer, not what a client says
def test_made_up_credentials_and_forwarded_for_do_not_make_a_new_client(movielens):
    c = TestClient(app_of(movielens, rate_limit="3/minute"), client=("127.0.0.1", 5000))
    codes = [
        c.get(
            "/items/search",
            params={"q": "heat"},
            headers={"Authorization": f"Bearer made-up-{n}", "X-Forwarded-For": f"10.0.0.{n}"},
        ).status_code
        for n in range(5)
    ]
    assert codes == [200, 200, 200, 429, 429]


def test_forwarded_for_counts_only_from_a_trusted_proxy(movielens):
    app = app_of(movielens, rate_limit="2/minute", trusted_proxies=["127.0.0.0/8"])
    proxy = TestClient(app, client=("127.0.0.1", 5000))

    def via(chain: str) -> int:
        headers = {"X-Forwarded-For": chain}
        return proxy.get("/items/search", params={"q": "heat"}, headers=headers).status_code

    assert [via("10.0.0.1") for _ in range(3)] == [200, 200, 429]
    assert via("10.0.0.2") == 200  # another client behind the proxy: its own bucket
    # a client's own X-Forwarded-For is to the left of what our proxy appended: ignored
    assert [via(f"6.6.6.{n}, 10.0.0.1") for n in range(2)] == [429, 429]
    assert via("10.0.0.3, 127.0.0.5") == 200  # a chain of trusted proxies is skipped


# 5. key guessing is throttled per address; each key has its own bucket
def test_wrong_keys_are_throttled_per_address(movielens):
    app = app_of(movielens, api_key="the-key")  # auth_fail_limit: 10/minute by default
    guesser = TestClient(app, client=("10.0.0.66", 5000))
    codes = [
        guesser.get("/metrics", headers={"Authorization": f"Bearer guess-{n}"}).status_code
        for n in range(30)
    ]
    assert codes == [401] * 10 + [429] * 20
    right = guesser.get("/metrics", headers={"Authorization": "Bearer the-key"})
    assert right.status_code == 200  # a valid key is never locked out (issue 34, item 3)
    other = TestClient(app, client=("10.0.0.7", 5000))
    assert other.get("/metrics", headers={"Authorization": "bearer the-key"}).status_code == 200
    text = other.get("/metrics", headers={"Authorization": "BEARER the-key"}).text
    assert "recfunnel_auth_failed_total 10.0" in text
    assert 'recfunnel_rate_limited_total{limit="auth"} 20.0' in text  # the valid key passed


def test_each_key_has_its_bucket_and_the_scraper_none(movielens):
    app = app_of(
        movielens, api_keys=["key-a", "key-b"], metrics_key="scrape", rate_limit="3/minute"
    )
    c = TestClient(app)

    def get(path: str, key: str) -> int:
        return c.get(
            path, params={"q": "heat"}, headers={"Authorization": f"Bearer {key}"}
        ).status_code

    assert [get("/items/search", "key-a") for _ in range(4)] == [200, 200, 200, 429]
    assert [get("/items/search", "key-b") for _ in range(3)] == [200, 200, 200]
    assert [get("/metrics", "scrape") for _ in range(10)] == [200] * 10
    assert get("/items/search", "scrape") == 401  # the scraper's key opens /metrics only
    assert c.get("/healthz", headers={"Authorization": "Bearer scrape"}).json()["items"] == 9742


def test_the_scrapers_key_is_unlimited_on_metrics_only(movielens):
    c = TestClient(app_of(movielens, metrics_key="scrape", rate_limit="2/minute"))
    scrape = {"Authorization": "Bearer scrape"}
    assert [c.get("/metrics", headers=scrape).status_code for _ in range(5)] == [200] * 5
    assert c.get("/metrics").status_code == 401  # the scraper's page needs its key
    codes = [c.get("/items/search", params={"q": "x"}, headers=scrape).status_code
             for _ in range(3)]  # fmt: skip
    assert codes == [200, 200, 429]  # elsewhere it is an anonymous client like any other


# 6. counters: every response by status (5xx too); LLM failures, timeouts, short-cuts
def test_a_500_is_counted(movielens, monkeypatch):
    svc = make_service(movielens, warmup=False)
    c = TestClient(create_app(svc), raise_server_exceptions=False)

    def broken(q: str, limit: int = 10) -> list:
        raise RuntimeError("a bug")

    monkeypatch.setattr(svc, "search", broken)
    assert c.get("/items/search", params={"q": "heat"}).status_code == 500
    text = c.get("/metrics").text
    assert 'recfunnel_requests_total{endpoint="/items/search",status="500"} 1.0' in text


def test_a_backend_failure_after_the_deadline_is_counted(movielens):
    llm = ScriptedLLM(logprobs=reverse_order)
    svc = make_service(movielens, llm, budget_ms=100, warmup=False)

    def late_outage(messages, options):
        time.sleep(0.3)
        raise LLMUnavailable("went away mid-answer")

    llm._option_logprobs = late_outage
    try:
        ans = svc.recommend(svc.resolve(history=[1, 260]), 10)
        assert ans.fallback_reason == "timeout"
        time.sleep(0.5)  # the job fails after the request stopped waiting
        text = svc.metrics.render().decode()
        assert "recfunnel_llm_timeouts_total 1.0" in text
        assert "recfunnel_llm_errors_total 1.0" in text
        assert "recfunnel_llm_short_circuits_total 0.0" in text
    finally:
        svc.close()


# 7. /healthz tells an anonymous caller only that it is up
def test_healthz_says_only_ok_without_a_key(movielens):
    c = TestClient(app_of(movielens, api_key="k"))
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/healthz", headers={"Authorization": "Bearer nope"}).status_code == 401
    detail = c.get("/healthz", headers={"Authorization": "Bearer k"}).json()
    assert set(detail) == {"status", "storage", "dataset", "items", "users", "pipeline",
                           "breaker", "version"}  # fmt: skip
    assert detail["dataset"] == "ml-latest-small" and detail["breaker"] == "closed"

"""The second round of black-box findings (issue 34), one test each, on the cheap `cf`
server where the item allows: /healthz no key oracle, lockouts that spare valid keys,
empty or padded key settings refused, bounded error bodies, IPv6 buckets, security
headers, fallbacks by their real cause, slow bodies, the pipeline's queue; and the
service metering every LLM it uses (issue 32, defect 4)."""

from __future__ import annotations

import asyncio
import time

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from recfunnel.core.errors import ConfigError
from recfunnel.serve.admission import Admission, Busy
from recfunnel.serve.app import create_app
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.metrics import Metrics
from recfunnel.serve.middleware import BodyLimit
from recfunnel.serve.service import Service
from scripted import ScriptedLLM
from serving import asgi_request, make_service, reverse_order

CF = {"pipeline": "cf", "warmup": False}


@pytest.fixture(scope="module")
def cf_service(movielens):
    svc = make_service(movielens, **CF)
    yield svc
    svc.close()


def app_of(movielens, **config):
    return create_app(make_service(movielens, **{**CF, **config}))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# 1. /healthz is no key oracle: a key shown there is checked and counted
def test_wrong_keys_on_healthz_are_refused_and_throttled(movielens):
    app = app_of(movielens, api_key="the-right-key")
    c = TestClient(app, client=("10.1.0.1", 5000))
    codes = [c.get("/healthz", headers=bearer(f"g{n}")).status_code for n in range(30)]
    assert codes == [401] * 10 + [429] * 20  # was 30 × 200
    assert c.get("/healthz").json() == {"status": "ok"}  # no key: still open
    detail = c.get("/healthz", headers=bearer("the-right-key")).json()
    assert detail["items"] == 9742 and detail["storage"] == "memory:// ok"
    text = TestClient(app).get("/metrics", headers=bearer("the-right-key")).text
    assert "recfunnel_auth_failed_total 10.0" in text


# 3. the lockout is for failed attempts: a valid key from that address still passes
def test_a_locked_out_address_still_serves_a_valid_key(movielens):
    app = app_of(movielens, api_key="the-right-key")
    nat = TestClient(app, client=("10.1.0.2", 5000))
    wrong = [nat.get("/metrics", headers=bearer(f"guess-{n}")).status_code for n in range(12)]
    assert wrong == [401] * 10 + [429] * 2
    right = nat.get("/items/search", params={"q": "heat"}, headers=bearer("the-right-key"))
    assert right.status_code == 200  # was 429 for 60 s
    assert nat.get("/metrics", headers=bearer("guess-x")).status_code == 429  # still locked


# 6 and 10. a key setting no request could match is refused at start, by name
@pytest.mark.parametrize("raw", [" ", ",", "", "k1,,k2", " k1 ,", "bad key"])
def test_an_empty_key_environment_variable_refuses_to_start(cf_service, monkeypatch, raw):
    monkeypatch.setenv("RECFUNNEL_API_KEY", raw)
    with pytest.raises(ConfigError, match=r"\$RECFUNNEL_API_KEY"):
        create_app(cf_service)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("api_key", "", "empty key"),
        ("api_key", "   ", "empty key"),
        ("api_key", " padded ", "surrounding spaces"),
        ("metrics_key", "scrape\n", "surrounding spaces"),
        ("api_keys", ["ok-key", ""], "entry 1: an empty key"),
        ("api_keys", ["clé"], "printable ASCII"),
    ],
)
def test_a_key_that_can_never_match_is_refused(field, value, says):
    with pytest.raises(ValidationError, match=says) as err:
        ServeConfig(**{field: value})
    assert err.value.errors()[0]["loc"][0] == field


def test_the_command_refuses_an_empty_key_before_fitting(monkeypatch):
    from typer.testing import CliRunner

    from recfunnel.cli import app

    monkeypatch.setenv("RECFUNNEL_API_KEY", ",")
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert res.exit_code != 0 and "RECFUNNEL_API_KEY" in res.output
    assert time.perf_counter() - t0 < 30  # refused before minutes of fitting


# 7. a 422 lists at most 20 problems and counts them all
def test_error_bodies_do_not_amplify(cf_service):
    c = TestClient(create_app(cf_service))
    body = b'{"history": [' + b",".join([b"-1"] * 500) + b"]}"
    r = c.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error_count"] == 1000  # each: id and title
    assert len(r.json()["detail"]) == 20 and len(r.content) < 4 * len(body)  # was ×124
    many = {"history": [1], **{f"f{n}": n for n in range(5000)}}
    r = c.post("/recommend", json=many)
    assert r.status_code == 422 and r.json()["error_count"] == 5000
    assert len(r.content) < 6_000  # was 638 KB


# 8. IPv6 behind a trusted proxy: one bucket per /64, whatever the spelling
def test_ipv6_clients_are_normalised_and_bucketed_by_prefix(movielens):
    app = app_of(movielens, rate_limit="3/minute", trusted_proxies=["127.0.0.0/8"])
    proxy = TestClient(app, client=("127.0.0.1", 5000))

    def via(chain: str) -> int:
        headers = {"X-Forwarded-For": chain}
        return proxy.get("/items/search", params={"q": "heat"}, headers=headers).status_code

    spellings = ["2001:db8:0:1::5", "2001:DB8:0:1:0:0:0:5", "[2001:db8:0:1::5]:443",
                 "fe80::1%eth0"]  # fmt: skip
    assert [via(s) for s in spellings[:3]] == [200, 200, 200]
    assert via("2001:db8:0:1:ffff::9") == 429  # another address of the same /64
    assert via("2001:db8:0:2::5") == 200  # the next /64: its own bucket
    assert [via("fe80::1%eth0") for _ in range(3)] + [via("fe80::1")] == [200] * 3 + [429]
    assert [via("::ffff:10.9.9.9") for _ in range(3)] + [via("10.9.9.9")] == [200] * 3 + [429]


def test_the_prefix_is_configurable(movielens):
    app = app_of(movielens, rate_limit="1/minute", trusted_proxies=["127.0.0.1"],
                 ipv6_prefix=128)  # fmt: skip
    proxy = TestClient(app, client=("127.0.0.1", 5000))
    for n in (1, 2):
        r = proxy.get("/items/search", params={"q": "a"},
                      headers={"X-Forwarded-For": f"2001:db8::{n}"})  # fmt: skip
        assert r.status_code == 200


# 9. the page and every answer carry the security headers
def test_every_answer_carries_the_security_headers(movielens):
    c = TestClient(app_of(movielens, api_key="k"))
    for r in (c.get("/"), c.get("/static/app.js"), c.get("/healthz"), c.get("/metrics"),
              c.get("/items/search", params={"q": "heat"}, headers=bearer("k"))):  # fmt: skip
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert "unsafe-inline" not in csp  # the page runs its own files only
    assert "cdn.jsdelivr.net" in c.get("/docs").headers["content-security-policy"]


# 11. a fallback is labelled by its real cause
def test_an_llm_free_servers_fallback_names_its_stage(cf_service):
    c = TestClient(create_app(cf_service))
    r = c.post("/recommend", json={"text": "space adventure"}).json()  # cf: no history
    assert r["fallback"] and r["fallback_reason"] == "retrieve:cf-fallback"
    text = c.get("/metrics").text
    assert 'recfunnel_fallbacks_total{reason="retrieve:cf-fallback"} 1.0' in text
    assert "llm-fallback" not in text and "recfunnel_llm_calls_total 0.0" in text


# 5. a body that trickles in gets 408 at its deadline
def test_a_slow_body_gets_408_at_its_deadline():
    async def app(scope, receive, send):  # pragma: no cover - never reached
        raise AssertionError("the app was called")

    limit = BodyLimit(app, 65536, timeout_s=0.3)
    sent: list[dict] = []

    async def trickle() -> dict:  # a byte every 0.1 s, never the end
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/recommend",
             "headers": [(b"content-type", b"application/json")]}  # fmt: skip
    t0 = time.perf_counter()
    asyncio.run(limit(scope, trickle, send))
    took = time.perf_counter() - t0
    start = sent[0]
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert b"0.3 s" in sent[1]["body"] and took < 1.0


def test_a_get_without_a_body_is_not_held_for_one(cf_service):
    r = asgi_request(create_app(cf_service), "GET", "/healthz", iter(()))
    assert r.status == 200 and r.pulled == 0


# 12. a bounded queue in front of the pipeline
def test_the_queue_bounds_what_runs_and_refuses_past_its_limits():
    async def burst(admission: Admission, n: int) -> list[str]:
        running, peak = 0, 0

        def job() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            time.sleep(0.05)
            running -= 1
            return "ok"

        async def one() -> str:
            try:
                return await admission.run(job)
            except Busy as exc:
                return f"busy {exc.retry_after}"

        out: list[str] = []

        async def collect() -> None:
            out.append(await one())

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(collect)
        out.append(f"peak {peak}")
        return out

    wide = Admission(ServeConfig(concurrency=2, queue=100, queue_timeout_s=5), Metrics())
    out = anyio.run(burst, wide, 20)
    assert out.count("ok") == 20 and out[-1] == "peak 2"
    m = Metrics()
    short = Admission(ServeConfig(concurrency=1, queue=3, queue_timeout_s=0.12), m)
    out = anyio.run(burst, short, 10)
    assert out[-1] == "peak 1" and 2 <= out.count("ok") <= 4
    assert out.count("busy 1") == 10 - out.count("ok")
    full = m.overloaded.labels("queue-full")._value.get()
    late = m.overloaded.labels("deadline")._value.get()
    assert full >= 6 and full + late == out.count("busy 1")  # every refusal counted, by why


def test_a_busy_pipeline_answers_503_with_retry_after(movielens, monkeypatch):
    import httpx

    svc = make_service(movielens, concurrency=1, queue=0, **CF)
    real = svc.recommend

    def slow(*a, **kw):
        time.sleep(0.3)
        return real(*a, **kw)

    monkeypatch.setattr(svc, "recommend", slow)
    app = create_app(svc)

    async def two() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return list(await asyncio.gather(*(c.post("/recommend", json={"user_id": 1})
                                               for _ in range(2))))  # fmt: skip

    codes = sorted(r.status_code for r in asyncio.run(two()))
    assert codes == [200, 503]


# issue 32, defect 4: every LLM the pipeline uses is metered and behind the breaker
def test_every_llm_of_the_pipeline_is_metered(movielens, monkeypatch):
    models = {"a": ScriptedLLM(logprobs=reverse_order), "b": ScriptedLLM(logprobs=reverse_order)}
    monkeypatch.setattr("recfunnel.llm.build_llm", lambda config, cache=None: models[config.model])
    pipe = {"name": "two-llms", "stages": [
        {"kind": "popularity"},
        {"kind": "verbalizer", "llm": {"model": "a", "cache": False}},
        {"kind": "pointwise", "llm": {"model": "b", "cache": False}},
    ]}  # fmt: skip
    svc = Service(ServeConfig(pipeline=pipe, warmup=False, rate_limit=None), dataset=movielens)
    try:
        assert svc.llms == [models["a"], models["b"]]
        ans = svc.recommend(svc.resolve(history=[1, 260]), 5)
        calls = models["a"].usage.calls + models["b"].usage.calls
        assert not ans.fallback and models["b"].usage.calls > 0
        assert ans.llm_calls == calls
        assert f"recfunnel_llm_calls_total {float(calls)}" in svc.metrics.render().decode()
        models["b"].down = True  # the second LLM fails: seen, not only the first's
        down = svc.recommend(svc.resolve(history=[2, 260]), 5)
        assert down.fallback_reason == "llm-unavailable"
        assert "recfunnel_llm_errors_total 1.0" in svc.metrics.render().decode()
    finally:
        svc.close()


def test_pool_order_is_kept_by_the_answer(cf_service):
    """The answer carries the ranked pool a chat filter narrows later."""
    req = cf_service.resolve(user_id=1)
    ans = cf_service.recommend(req, 5)
    pool = [i for i, _ in ans.pool]
    assert pool[:5] == [it.index for it in ans.items] and len(pool) > 5
    assert all(np.isfinite(s) for _, s in ans.pool)

"""Property-based: bodies built from the published OpenAPI schema's fields, each field
either a plausible value or a hostile one (lone surrogates, NaN and ±Infinity, numbers
far past 64 bits, wrong types, oversized text), sent whole or chunked. Whatever arrives,
the answer is never a 5xx, always JSON, and a refusal names the field and quotes at most
a short excerpt."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfunnel.serve.app import create_app
from serving import asgi_request

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
HOSTILE_TEXT = st.text(
    st.one_of(SURROGATE, st.characters(), st.sampled_from('\x00\n"\\')), max_size=12
)
HUGE = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**300, -(10**300), 1e308, -1e308]),
)
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
SCALAR = st.one_of(HOSTILE_TEXT, HUGE, NON_FINITE, st.floats(), st.booleans(), st.none())
HOSTILE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3),
    max_leaves=8,
)


def plausible(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value of the field's declared type(s), within its declared bounds."""
    options = spec.get("anyOf", [spec])
    found: list[st.SearchStrategy[Any]] = []
    for o in options:
        kind = o.get("type")
        if kind == "integer":
            found.append(st.integers(o.get("minimum", -5), o.get("maximum", 200_000)))
        elif kind == "string":
            found.append(
                st.sampled_from(
                    [
                        "Toy Story",
                        "Heat",
                        "funny space film",
                        "hello",
                        "I loved Alien, no horror",
                        "1",
                        "x" * 30,
                    ]
                )
            )
        elif kind == "array":
            found.append(st.lists(plausible(o["items"]), max_size=5))
        elif kind == "null":
            found.append(st.none())
    return st.one_of(found) if found else st.none()


def body_strategy(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the schema's fields, each plausible or hostile; sometimes a field the
    schema does not have."""
    fields = {
        name: st.one_of(plausible(spec), HOSTILE) for name, spec in schema["properties"].items()
    }
    extra = st.dictionaries(st.sampled_from(["colour", "\ud800", "k" * 300]), HOSTILE, max_size=1)
    return st.tuples(st.fixed_dictionaries({}, optional=fields), extra).map(
        lambda pair: {**pair[0], **pair[1]}
    )


def request_schema(app, path: str) -> dict[str, Any]:
    spec = app.openapi()
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return spec["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]


def check(status: int, body: bytes) -> None:
    assert status < 500, body[:300]
    out = json.loads(body)  # always JSON, always encodable
    if status == 422:
        assert isinstance(out["detail"], list) and len(body) < 8_000, len(body)
        for err in out["detail"]:
            assert err["field"] and err["msg"] and len(err.get("input", "")) <= 41


@pytest.fixture(scope="module")
def app(service):
    return create_app(service)


@pytest.mark.parametrize("path", ["/recommend", "/chat"])
def test_hostile_bodies_whole_or_chunked_never_get_a_5xx(app, path):
    client = TestClient(app)
    statuses: list[int] = []

    @given(
        body=body_strategy(request_schema(app, path)),
        chunked=st.booleans(),
        cut=st.integers(1, 64),
        pad=st.sampled_from([0, 0, 0, 70_000]),
    )
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(body: dict[str, Any], chunked: bool, cut: int, pad: int) -> None:
        if pad:
            body = {**body, "text": "p" * pad}
        raw = json.dumps(body, allow_nan=True).encode()  # NaN, Infinity; surrogates \ud800
        if chunked:
            chunks = [raw[i : i + cut * 37] for i in range(0, len(raw), cut * 37)]
            r = asgi_request(app, "POST", path, chunks)
            status, content = r.status, r.body
        else:
            resp = client.post(path, content=raw, headers={"content-type": "application/json"})
            status, content = resp.status_code, resp.content
        check(status, content)
        statuses.append(status)

    run()
    assert {200, 413, 422} <= set(statuses), sorted(set(statuses))
    metrics = client.get("/metrics").text
    assert not re.search(r'status="5\d\d"', metrics)


def test_hostile_query_strings_never_get_a_5xx(app):
    client = TestClient(app)

    @given(
        q=st.one_of(st.text(max_size=120), st.sampled_from(["%ED%A0%80", "%FF%FE", "%00"])),
        limit=st.one_of(HUGE.map(str), NON_FINITE.map(str), st.sampled_from(["", "1e3"])),
    )
    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(q: str, limit: str) -> None:
        r = client.get("/items/search", params={"q": q, "limit": limit})
        check(r.status_code, r.content)
        if q.startswith("%"):  # percent-escapes of bytes that are not UTF-8, sent as they are
            raw = client.get(f"/items/search?q={q}&limit=3")
            check(raw.status_code, raw.content)

    run()

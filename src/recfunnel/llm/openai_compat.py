"""Back-end for any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, OpenAI).

The server applies its own chat template, so the prompt that identifies an answer in the
cache is the canonical JSON of the messages. Transient failures (connection refused,
timeouts, 429, 5xx) are retried with bounded exponential back-off; anything else, and the
last failed try, becomes :class:`LLMUnavailable` naming the URL, so a run never hangs on a
dead server and never silently scores with made-up numbers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import numpy as np

from recfunnel.llm.base import LLM, LLMConfig, LLMUnavailable, Message
from recfunnel.llm.cache import AnswerCache

log = logging.getLogger(__name__)

T = TypeVar("T")

_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 8.0
_JITTER = 0.1
"""Up to this fraction of a delay is added, so parallel clients do not retry in lockstep."""

# Failures where the same request may well succeed a moment later.
_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,  # connect/read/write/pool timeouts
    httpx.NetworkError,  # connection refused or reset
    httpx.RemoteProtocolError,  # server closed the connection mid-answer
)


class LLMRequestRejected(LLMUnavailable):
    """The server refused the request itself (HTTP 4xx other than 429): retrying won't help."""


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429/503 asks us to wait (delta-seconds or an HTTP date), if it says."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: httpx.Response) -> str:
    """The server's error message, short enough for a log line."""
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except (ValueError, AttributeError):
        text = response.text
    return text.strip()[:300]


class OpenAILLM(LLM):
    """Chat completions and next-token option log-probs over HTTP."""

    backend = "openai"

    def __init__(self, config: LLMConfig, cache: AnswerCache | None = None) -> None:
        super().__init__(config, cache)
        self.base_url = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # trust_env=False: HTTP(S)_PROXY must never reroute calls to a loopback server.
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=config.timeout_s,
            headers=headers,
            trust_env=False,
            limits=httpx.Limits(max_connections=max(config.concurrency, 1) * 2),
        )
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._attempts_lock = threading.Lock()
        self.http_attempts = 0
        """HTTP requests actually sent, retries included (diagnostics and tests)."""

    def close(self) -> None:
        self._http.close()

    @property
    def model_id(self) -> str:
        return f"openai:{self.base_url}:{self.config.model}"

    def render(self, messages: Sequence[Message]) -> str:
        return json.dumps(
            [dict(m) for m in messages], sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )

    # ---- HTTP with retries -----------------------------------------------------------
    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Back-off before retry ``attempt`` (0-based): the server's Retry-After if it gave
        one, else 0.5 s doubling, both capped so a retry loop stays bounded."""
        asked = _retry_after(response) if response is not None else None
        if asked is not None:
            return min(asked, _MAX_DELAY_S)
        base = min(_FIRST_DELAY_S * 2**attempt, _MAX_DELAY_S)
        with self._rng_lock:
            return base + self._rng.uniform(0, _JITTER * base)

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON and return the decoded answer, retrying what is worth retrying."""
        url = f"{self.base_url}{path}"
        last = "no attempt made"
        last_exc: Exception | None = None
        tries = self.config.retries + 1
        for attempt in range(tries):
            response: httpx.Response | None = None
            with self._attempts_lock:
                self.http_attempts += 1
            try:
                response = self._http.post(path, json=payload)
            except _TRANSIENT_ERRORS as exc:
                last, last_exc = f"{type(exc).__name__}: {exc}", exc
            except httpx.HTTPError as exc:  # bad URL scheme, TLS setup, ...: not transient
                raise LLMUnavailable(f"request to {url} failed: {exc}") from exc
            else:
                status = response.status_code
                if status < 400:
                    try:
                        body = response.json()
                    except ValueError as exc:
                        raise LLMUnavailable(f"{url} answered {status} with non-JSON") from exc
                    if not isinstance(body, dict):
                        raise LLMUnavailable(f"{url} answered {status} with {type(body).__name__}")
                    return body
                last = f"HTTP {status}: {_error_text(response)}"
                if status != 429 and status < 500:
                    raise LLMRequestRejected(f"{url} rejected the request ({last})")
            if attempt + 1 < tries:
                delay = self._delay(attempt, response)
                log.warning(
                    "%s failed (%s); retry %d/%d in %.2fs",
                    url, last, attempt + 1, self.config.retries, delay,
                )  # fmt: skip
                time.sleep(delay)
        raise LLMUnavailable(f"{url} failed after {tries} tries; last error: {last}") from last_exc

    # ---- back-end hooks --------------------------------------------------------------
    def _chat_payload(self, messages: Sequence[Message], **params: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": [dict(m) for m in messages],
            "seed": self.config.seed,
            **params,
        }
        if messages and messages[-1]["role"] == "assistant":
            # vLLM's extension: continue the assistant prefix instead of closing the turn.
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    def _complete(
        self, messages: Sequence[Message], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> tuple[str, int, int]:
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if stop:
            params["stop"] = list(stop)
        body = self._post("/chat/completions", self._chat_payload(messages, **params))
        try:
            text = body["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMUnavailable(f"{self.base_url} gave no chat choice: {body!r:.300}") from exc
        usage = body.get("usage") or {}
        pt = usage.get("prompt_tokens")
        ct = usage.get("completion_tokens")
        if pt is None:
            pt = self.count_tokens(self.render(messages))
        if ct is None:
            ct = len(text) // 4
        return text, int(pt), int(ct)

    def _option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str]
    ) -> tuple[np.ndarray, int, int]:
        payload = self._chat_payload(
            messages,
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=self.config.top_logprobs,
        )
        body = self._post("/chat/completions", payload)
        top = _top_logprobs(body)
        if not top:
            raise LLMUnavailable(
                f"{self.base_url} returned no top_logprobs (does the server support logprobs? "
                "llama.cpp's needs logits_all)"
            )
        best: dict[str, float] = {}
        for token, lp in top:
            key = token.strip()
            if key not in best or lp > best[key]:
                best[key] = lp
        floor = min(lp for _, lp in top) - math.log(2)
        scores = np.array([best.get(o.strip(), floor) for o in options], dtype=np.float64)
        missing = sum(o.strip() not in best for o in options)
        usage = body.get("usage") or {}
        pt = usage.get("prompt_tokens")
        if pt is None:
            pt = self.count_tokens(self.render(messages))
        return scores, int(pt), missing

    def _complete_many(
        self,
        batch: Sequence[Sequence[Message]],
        max_tokens: int,
        temperature: float,
        stop: Sequence[str],
    ) -> list[tuple[str, int, int]]:
        return self._parallel(lambda m: self._complete(m, max_tokens, temperature, stop), batch)

    def _option_logprobs_many(
        self, batch: Sequence[Sequence[Message]], options: Sequence[str]
    ) -> list[tuple[np.ndarray, int, int]]:
        return self._parallel(lambda m: self._option_logprobs(m, options), batch)

    def _parallel(
        self, fn: Callable[[Sequence[Message]], T], batch: Sequence[Sequence[Message]]
    ) -> list[T]:
        """``fn`` over the batch with ``concurrency`` requests in flight, in input order.

        On the first failure, requests not yet started are cancelled, those in flight are
        allowed to finish (no abandoned threads), and the failure is raised.
        """
        if len(batch) <= 1 or self.config.concurrency == 1:
            return [fn(m) for m in batch]
        pool = ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, len(batch)), thread_name_prefix="openai"
        )
        try:
            futures = [pool.submit(fn, m) for m in batch]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            error = failed.exception() if failed is not None else None
            if error is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise error
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _top_logprobs(body: dict[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) of the first generated position, from a chat or legacy answer."""
    try:
        lp = body["choices"][0].get("logprobs") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return []
    content = lp.get("content")
    if content:  # chat shape: content[0].top_logprobs = [{token, logprob}, ...]
        return [
            (str(t["token"]), float(t["logprob"])) for t in content[0].get("top_logprobs") or []
        ]
    legacy = lp.get("top_logprobs")
    if legacy and isinstance(legacy[0], dict):  # completions shape: [{token: logprob}, ...]
        return [(str(t), float(v)) for t, v in legacy[0].items()]
    return []


__all__ = ["LLMRequestRejected", "OpenAILLM"]

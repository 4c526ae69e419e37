"""uvicorn's HTTP/1.1 protocol with a deadline for request headers: a connection that
has not sent a whole request head within ``header_timeout_s`` of opening (or of its
previous answer) is closed. uvicorn bounds the time between keep-alive requests and the
number of connections, but not a request head sent a byte every few seconds; the body's
deadline is :class:`~recfunnel.serve.middleware.BodyLimit`'s."""

from __future__ import annotations

import asyncio
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "RECFUNNEL_HEADER_TIMEOUT_S"
"""The deadline in seconds (set by ``recfunnel serve`` from ``header_timeout_s``, so
every worker process reads the same)."""


class HeaderDeadline(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request head is late."""

    _deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, "10"))
        self._deadline = self.loop.call_later(timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no answer: the client never finished asking

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is in: the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

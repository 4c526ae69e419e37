"""Serving: the funnel behind an HTTP API (``recfunnel serve``), a demo page, and chat.

:mod:`~recfunnel.serve.service` answers requests (routing, latency budget, circuit breaker,
explanations) with no HTTP in sight, so the chat, the simulator and the app share it;
:mod:`~recfunnel.serve.app` is the FastAPI layer (auth, rate limit, metrics, errors).
"""

from recfunnel.serve.config import ServeConfig

__all__ = ["ServeConfig"]

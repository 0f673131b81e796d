"""On SIGTERM, tell the model how long it has left, so that work it cannot finish is answered 503
now rather than cancelled (a 500) when the grace period runs out.

uvicorn owns SIGTERM while it serves (it starts its graceful shutdown on it); kembed chains its own
handler in front of uvicorn's from the app's lifespan, which runs after uvicorn installed its own.
A model without a queue of its own to drain (the transformer, waiting on its predictor) runs its
requests under a `ShutdownDeadline`, which answers what is unfinished at the deadline with 503.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from kembed.errors import Unavailable

# Answers must be written before uvicorn cancels what is left at the end of the grace period.
MARGIN_S = 1.5


def drain_on_sigterm(app: FastAPI, drain: Callable[[float], None], grace_seconds: float) -> None:
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(sig: int, frame: Any) -> None:
            loop.call_soon_threadsafe(drain, max(grace_seconds - MARGIN_S, 0.5))
            if callable(previous):
                previous(sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        async with original(app_) as state:
            yield state

    app.router.lifespan_context = lifespan


class ShutdownDeadline:
    """Requests in flight, each run until the drain deadline at most: at the deadline what has not
    finished is cancelled and answered 503 with Retry-After (`Unavailable`), and a request that
    arrives after it is refused at once."""

    def __init__(self) -> None:
        self._deadline: float | None = None  # the event loop's clock, set by drain()
        self._running: set[asyncio.Timeout] = set()

    def drain(self, seconds: float) -> None:
        """The server stops in `seconds`: every request in flight, and every later one, ends by then."""
        self._deadline = asyncio.get_running_loop().time() + seconds
        for timeout in self._running:
            timeout.reschedule(self._deadline)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the body as one request in flight; `Unavailable` when the deadline cuts it short."""
        if self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline:
            raise Unavailable("the server is shutting down and cannot take this request", 1)
        timeout = asyncio.timeout_at(self._deadline)
        try:
            async with timeout:
                self._running.add(timeout)
                try:
                    yield
                finally:
                    self._running.discard(timeout)
        except TimeoutError:
            if not timeout.expired():  # the body's own timeout, not the deadline
                raise
            raise Unavailable("the server is shutting down; this request did not finish", 1) from None

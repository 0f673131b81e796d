"""On SIGTERM, tell the model how long it has left, so that work it cannot finish is answered 503
now rather than cancelled (a 500) when the grace period runs out.

uvicorn owns SIGTERM while it serves (it starts its graceful shutdown on it); kembed chains its own
handler in front of uvicorn's from the app's lifespan, which runs after uvicorn installed its own.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

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

"""How a kembed server plugs into kserve's ModelServer: request metrics by status, 429s that say
when to retry, and request decoding whose failures are the client's (400), not the server's (500).

The metrics middleware is pure ASGI (no per-request Starlette objects) so it costs microseconds;
it sees every status, including the 4xx/5xx that kserve produces before a model is reached.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve import Model, ModelServer, model_server
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.dataplane import DataPlane

from predictor import metrics
from predictor.batcher import BatcherClosed, QueueFull

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COUNTED_SUFFIXES = ("/infer", "/embeddings")


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, model_name: str):
        self.app = app
        self.model_name = model_name
        self.duration = metrics.REQUEST_DURATION.labels(model=model_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(COUNTED_SUFFIXES):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            metrics.REQUESTS.labels(model=self.model_name, status=str(status)).inc()
            self.duration.observe(time.perf_counter() - started)


async def queue_full_handler(_: Request, exc: Exception) -> JSONResponse:
    retry_after = exc.retry_after_s if isinstance(exc, QueueFull) else 1
    return JSONResponse(
        status_code=429 if isinstance(exc, QueueFull) else 503,
        content={"error": str(exc)},
        headers={"Retry-After": str(retry_after)},
    )


def install(app: FastAPI, model_name: str) -> None:
    """Adds kembed's middleware and overload handlers to kserve's FastAPI app (before start)."""
    app.add_middleware(RequestMetricsMiddleware, model_name=model_name)
    app.add_exception_handler(QueueFull, queue_full_handler)
    app.add_exception_handler(BatcherClosed, queue_full_handler)


class ClientDecodingDataPlane(DataPlane):
    """kserve's decoder lets malformed bodies escape as ValueError, KeyError or InferenceError (a
    500). Decoding only reads what the client sent, so any failure there is a 400 naming it."""

    def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput:
            raise
        except (ValueError, KeyError, TypeError, IndexError, InferenceError) as exc:
            raise InvalidInput(f"malformed V2 request: {exc}") from exc


def serve(model: Model, workers: int = 1) -> None:
    """Starts kserve's ModelServer for one loaded model, with kembed's edges installed."""
    install(model_server.app, model.name)
    server = ModelServer(workers=workers)
    server.dataplane = ClientDecodingDataPlane(server.registered_models)
    server.start([model])

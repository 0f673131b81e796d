"""The ASGI app: `POST /` takes one CloudEvent and answers with the reply event.

`GET /healthz` for Knative's probes (it does not depend on the InferenceService, so the service can
scale from zero on its own) and `GET /metrics` for Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from eventing import metrics
from eventing.dedup import Deduplicator
from eventing.errors import EventFailure
from eventing.inference import Embedder
from eventing.reply import Encoded, plan_reply
from eventing.request import EmbedJob, parse_job
from eventing.retry import retriable, with_retries
from eventing.settings import Settings
from eventing.sink import Sink

logger = logging.getLogger("kembed.eventing")


@dataclass
class Progress:
    """What the attempts of one event achieved, kept between its deliveries (see `Deduplicator`).

    Chunk results until the reply is planned; then the reply and the parts K_SINK has not accepted
    yet, encoded once, so a retry sends the very bytes of the first attempt and skips accepted parts.
    """

    chunks: dict[int, np.ndarray] = field(default_factory=dict)
    reply: Encoded | None = None
    unsent: dict[int, Encoded] = field(default_factory=dict)

    def nbytes(self) -> int:
        planned = sum(event.size for event in (self.reply, *self.unsent.values()) if event is not None)
        return planned + sum(array.nbytes for array in self.chunks.values())


class EventHandler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedder = Embedder(settings)
        self.sink = (
            Sink(settings.sink, settings.request_timeout_seconds, settings.retry_after_seconds)
            if settings.sink
            else None
        )
        self.events: Deduplicator[Progress, Encoded] = Deduplicator(
            settings.dedup_ttl_seconds, settings.dedup_max_entries, settings.dedup_max_bytes, Progress,
            Progress.nbytes,
        )

    async def close(self) -> None:
        await self.events.drain()
        await self.embedder.close()
        if self.sink is not None:
            await self.sink.close()

    async def handle(self, request: Request) -> Response:
        metrics.RECEIVED.inc()
        try:
            body = await read_body(request, self.settings.max_request_bytes)
            job = parse_job(request.headers, body, self.settings.request_type, self.settings.max_items)
            reply, deduplicated = await self.events.run(job.key, lambda progress: self.attempt(job, progress))
        except EventFailure as failure:
            metrics.FAILED.labels(reason=failure.reason).inc()
            logger.warning("event failed with %d (%s): %s", failure.status, failure.reason, failure.message)
            return failure.response()
        except Exception:
            metrics.FAILED.labels(reason="internal").inc()
            logger.exception("event failed unexpectedly")
            return JSONResponse({"error": "internal error", "reason": "internal"}, status_code=500)
        metrics.COMPLETED.inc()
        if deduplicated:
            metrics.DEDUPLICATED.inc()
            logger.info("event source=%s id=%s: redelivery answered with the stored reply", *job.key)
        return Response(reply.body, status_code=200, headers=reply.headers)

    async def attempt(self, job: EmbedJob, progress: Progress) -> Encoded:
        """One attempt at an event, resuming from what earlier attempts left in ``progress``."""
        try:
            return await self.compute(job, progress)
        except EventFailure as failure:
            if not retriable(failure):  # Knative does not redeliver it: nothing to keep
                progress.chunks.clear()
            raise

    async def compute(self, job: EmbedJob, progress: Progress) -> Encoded:
        started = time.perf_counter()
        reused = len(progress.chunks)
        if progress.reply is None:
            embeddings = await self.embedder.embed(job.texts, job.options, progress.chunks)
            # Encoding thousands of vectors takes a while: keep the event loop free for probes.
            plan = await asyncio.to_thread(plan_reply, job, embeddings, self.settings)
            progress.unsent = dict(enumerate(plan.parts, start=1))
            progress.reply = plan.reply
            progress.chunks.clear()  # the encoded reply and parts hold the results now
        for number, part in list(progress.unsent.items()):
            assert self.sink is not None  # plan_reply only splits when a sink is set
            await with_retries(
                lambda part=part: self.sink.send(part), self.settings.call_attempts,
                self.settings.call_backoff_seconds, "part",
            )
            del progress.unsent[number]
        logger.info(
            "event source=%s id=%s: %d items in %d chunk(s) (%d from an earlier attempt), reply %d bytes, "
            "%.2fs",
            *job.key, len(job.texts), math.ceil(len(job.texts) / self.settings.chunk_size), reused,
            progress.reply.size, time.perf_counter() - started,
        )
        return progress.reply


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length", "")
    too_large = EventFailure(413, "too_large", f"event body exceeds max_request_bytes ({limit})")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def healthz(_: Request) -> Response:
    return PlainTextResponse("ok")


async def prometheus(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings) -> Starlette:
    handler = EventHandler(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        logger.info(
            "accepting %s events for model %s at %s (chunks of %d, %d in parallel, K_SINK %s)",
            settings.request_type, settings.model_name, settings.inference_url, settings.chunk_size,
            settings.parallelism, settings.sink or "unset",
        )
        yield
        await handler.close()

    routes = [
        Route("/", handler.handle, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)

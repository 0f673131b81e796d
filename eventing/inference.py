"""Chunked V2 calls to the InferenceService with the kernel's V2 client, order kept.

One semaphore per process bounds the V2 calls in flight across all events, so a burst of events
cannot flood the predictor's queue. A failed call is retried here first (`eventing.retry`); what still
fails comes back to Knative as 429/503 to retry later, and the chunks that succeeded are kept for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx
import numpy as np

from eventing import metrics
from eventing.errors import EventFailure, unavailable
from eventing.retry import with_retries
from eventing.settings import Settings
from kembed.client import EmbeddingClient, UpstreamError
from kembed.contract import EmbedOptions

RETRIED_UPSTREAM = (404, 408, 409)


class Embedder:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.inference_url
        # kserve's REST client builds no transport of its own: pass one that retries refused connections once.
        self.client = EmbeddingClient(
            settings.inference_url,
            settings.model_name,
            timeout_s=settings.request_timeout_seconds,
            transport=httpx.AsyncHTTPTransport(retries=1),
            default_retry_after=settings.retry_after_seconds,
        )
        self.semaphore = asyncio.Semaphore(settings.parallelism)

    async def close(self) -> None:
        await self.client.close()

    async def embed(self, texts: Sequence[str], options: EmbedOptions, done: dict[int, np.ndarray]) -> np.ndarray:
        """Embeddings [len(texts), D] in input order.

        ``done`` maps a chunk's first index to its embeddings and outlives a failed attempt: chunks in
        it are not computed again, and every chunk that succeeds is added to it. Each chunk is retried
        (`with_retries`); once one has failed for good no further chunk starts, the ones in flight finish
        (and are kept), and the event fails with that chunk's failure.
        """
        size = self.settings.chunk_size
        failures: list[Exception] = []

        async def chunk(start: int) -> None:
            async def call() -> np.ndarray:
                async with self.semaphore:
                    if failures:
                        raise _Abandoned
                    return await self._chunk(texts[start : start + size], options)

            try:
                done[start] = await with_retries(
                    call, self.settings.call_attempts, self.settings.call_backoff_seconds, "chunk"
                )
            except _Abandoned:
                pass
            except Exception as exc:  # kept and raised below, once the chunks in flight have finished
                failures.append(exc)

        await asyncio.gather(*(chunk(start) for start in range(0, len(texts), size) if start not in done))
        if failures:
            raise failures[0]
        return np.concatenate([done[start] for start in range(0, len(texts), size)])

    async def _chunk(self, texts: Sequence[str], options: EmbedOptions) -> np.ndarray:
        """One V2 call, tried once. The caller holds the semaphore (not taken here: asyncio's is not
        reentrant) and retries."""
        started = time.perf_counter()
        try:
            embeddings = await self.client.embed_texts(texts, options)
        except UpstreamError as exc:
            raise self._failure(exc) from exc
        metrics.CHUNK_SECONDS.observe(time.perf_counter() - started)
        metrics.ITEMS_EMBEDDED.inc(len(texts))
        return embeddings

    def _failure(self, exc: UpstreamError) -> EventFailure:
        """429 stays 429; 5xx, unreachable, timeouts and not-found become 503 (retried); an answer that is
        no V2 embedding is 502 (retried); other 4xx are the event's fault (400, not retried)."""
        retry_after = exc.retry_after or self.settings.retry_after_seconds
        message = f"inference service {self.url}: {exc.message}"
        if exc.reason == "overloaded":
            return EventFailure(429, "overloaded", message, retry_after)
        if exc.reason == "bad_response":
            return bad_upstream(message)
        if exc.reason == "rejected" and exc.status not in RETRIED_UPSTREAM:
            return EventFailure(400, "rejected", message)
        return unavailable(message, retry_after)


class _Abandoned(Exception):
    """A chunk not started because another chunk of the same event already failed for good."""


def bad_upstream(message: str) -> EventFailure:
    """The URL answers, but not as a V2 embedding model: 502, retried (it may be mid-rollout)."""
    return EventFailure(502, "bad_upstream", message)

"""Chunked V2 calls to the InferenceService with kserve's REST client, order kept.

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
from kserve.errors import InvalidInput
from kserve.inference_client import InferenceRESTClient, RESTConfig

from eventing import metrics
from eventing.errors import EventFailure, unavailable
from eventing.retry import with_retries
from eventing.settings import Settings
from kembed.contract import EmbedOptions, embeddings_from_response, text_request

RETRIED_UPSTREAM = (404, 408, 409)


class Embedder:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.inference_url
        # RESTConfig builds no transport of its own: pass one that retries refused connections once.
        transport = httpx.AsyncHTTPTransport(retries=1)
        config = RESTConfig(protocol="v2", timeout=settings.request_timeout_seconds, transport=transport)
        self.client = InferenceRESTClient(config)
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
        name = self.settings.model_name
        started = time.perf_counter()
        try:
            response = await self.client.infer(self.url, text_request(name, texts, options), model_name=name)
        except httpx.HTTPStatusError as exc:
            raise self._status_failure(exc) from exc
        except httpx.TimeoutException as exc:
            raise unavailable(
                f"inference service {self.url} timed out after {self.settings.request_timeout_seconds}s",
                self.settings.retry_after_seconds,
            ) from exc
        except httpx.HTTPError as exc:
            raise unavailable(
                f"inference service {self.url} is unreachable: {exc or type(exc).__name__}",
                self.settings.retry_after_seconds,
            ) from exc
        except (ValueError, KeyError, TypeError, IndexError, InvalidInput) as exc:
            raise bad_upstream(f"inference service {self.url} sent an unreadable V2 response: {exc}") from exc
        metrics.CHUNK_SECONDS.observe(time.perf_counter() - started)
        try:
            embeddings = embeddings_from_response(response)
        except (ValueError, InvalidInput) as exc:
            raise bad_upstream(f"inference service {self.url} sent no embeddings: {exc}") from exc
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise bad_upstream(
                f"inference service {self.url} returned embeddings of shape {list(embeddings.shape)} "
                f"for {len(texts)} texts"
            )
        metrics.ITEMS_EMBEDDED.inc(len(texts))
        return embeddings

    def _status_failure(self, exc: httpx.HTTPStatusError) -> EventFailure:
        """429 stays 429; 5xx and not-found/timeout become 503 (retried); other 4xx are the event's fault."""
        status = exc.response.status_code
        retry_after = _retry_after(exc.response) or self.settings.retry_after_seconds
        message = f"inference service answered {exc}"
        if status == 429:
            return EventFailure(429, "overloaded", message, retry_after)
        if status >= 500 or status in RETRIED_UPSTREAM:
            return unavailable(message, retry_after)
        return EventFailure(400, "rejected", message)


class _Abandoned(Exception):
    """A chunk not started because another chunk of the same event already failed for good."""


def bad_upstream(message: str) -> EventFailure:
    """The URL answers, but not as a V2 embedding model: 502, retried (it may be mid-rollout)."""
    return EventFailure(502, "bad_upstream", message)


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after", "")
    return int(value) if value.isdigit() else None

"""Bounded retries of one call (a chunk's V2 call, a part's POST) inside the service.

One transient failure among an event's many calls should not fail the whole event: each call is
tried up to `call_attempts` times, waiting `call_backoff_seconds` * 2^n (half of it jittered, so
the chunks of a burst do not retry in step) between tries. Only failures a retry can cure are
retried (429 and 5xx, which cover timeouts and resets); the event fails with the last one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from eventing import metrics
from eventing.errors import EventFailure

T = TypeVar("T")
logger = logging.getLogger("kembed.eventing")


def retriable(failure: EventFailure) -> bool:
    return failure.status == 429 or failure.status >= 500


def backoff_seconds(attempt: int, base: float) -> float:
    """The wait after try number ``attempt`` (0-based) failed: base·2^attempt, the upper half jittered."""
    delay = base * 2**attempt
    return delay / 2 + random.uniform(0, delay / 2)


async def with_retries(call: Callable[[], Awaitable[T]], attempts: int, base_seconds: float, what: str) -> T:
    """``call()``'s result, retrying retriable `EventFailure`s; ``what`` names the call in logs and metrics."""
    tries = 0
    while True:
        try:
            return await call()
        except EventFailure as failure:
            tries += 1
            if not retriable(failure) or tries >= attempts:
                raise
            delay = backoff_seconds(tries - 1, base_seconds)
            metrics.RETRIES.labels(call=what).inc()
            logger.info("%s failed with %d (try %d of %d), trying again in %.2fs: %s", what, failure.status, tries,
                        attempts, delay, failure.message)
            await asyncio.sleep(delay)

"""What a Knative Trigger does with a subscriber's answers, for tests: its backoff schedule and a small
broker that delivers events as the Broker's dispatcher does (retries with backoff, then dead letter).

The schedule is Knative's own (knative/eventing pkg/kncloudevents/retries.go): an exponential policy
waits ``backoffDelay * 2**n`` before retry n, a linear one ``backoffDelay * n``, where n counts from 0
because go-retryablehttp's `Client.Do` passes its loop index (0 for the first retry). So retry: 6 with
backoffDelay PT1S waits 1, 2, 4, 8, 16, 32 s: 63 s in all. Retried: no answer, 5xx, 404, 408, 409, 429
(`SelectiveRetry`); any other answer that is not a 2xx goes straight to the dead-letter sink.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import httpx

RETRIED = frozenset({404, 408, 409, 429})


def iso_seconds(duration: str) -> float:
    """An ISO 8601 duration of hours, minutes and seconds (``PT1S``, ``PT0.5S``, ``PT2M``) in seconds."""
    match = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", duration)
    if match is None or duration == "PT":
        raise ValueError(f"not an ISO 8601 time duration: {duration!r}")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def backoff_schedule(retry: int, policy: str, delay_seconds: float) -> list[float]:
    """The waits before each of ``retry`` retries."""
    if policy == "exponential":
        return [delay_seconds * 2**n for n in range(retry)]
    if policy == "linear":
        return [delay_seconds * n for n in range(retry)]
    raise ValueError(f"unknown backoffPolicy {policy!r}")


def retried(status: int | None) -> bool:
    return status is None or status >= 500 or status in RETRIED


@dataclass
class Outcome:
    """How one event ended: the reply (status 200, headers, body) or the dead letter (last failure)."""

    replied: bool
    status: int | None
    headers: dict[str, str]
    body: bytes
    deliveries: int


@dataclass
class Broker:
    """Delivers each event to ``url`` like a Trigger with ``retry``/``delay_seconds`` (exponential).

    ``lose_first_reply`` names events whose first successful answer is dropped as if the dispatcher
    had timed out, so they are delivered again."""

    url: str
    retry: int
    delay_seconds: float
    timeout_seconds: float
    concurrency: int = 16
    lose_first_reply: set[str] = field(default_factory=set)
    lost: dict[str, bytes] = field(default_factory=dict)

    async def deliver_all(self, events: list[tuple[str, dict[str, str], bytes]]) -> dict[str, Outcome]:
        gate = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:

            async def one(event_id: str, headers: dict[str, str], body: bytes) -> tuple[str, Outcome]:
                async with gate:
                    return event_id, await self.deliver(client, event_id, headers, body)

            done = await asyncio.gather(*(one(*event) for event in events))
        return dict(done)

    async def deliver(self, client: httpx.AsyncClient, event_id: str, headers: dict[str, str],
                      body: bytes) -> Outcome:
        waits = backoff_schedule(self.retry, "exponential", self.delay_seconds)
        status: int | None = None
        answer_headers: dict[str, str] = {}
        answer = b""
        for delivery in range(self.retry + 1):
            try:
                response = await client.post(self.url, headers=headers, content=body)
                status, answer_headers, answer = response.status_code, dict(response.headers), response.content
            except httpx.HTTPError as exc:
                status, answer_headers, answer = None, {}, str(exc).encode()
            if status is not None and 200 <= status < 300:
                if event_id in self.lose_first_reply and event_id not in self.lost:
                    self.lost[event_id] = answer
                else:
                    return Outcome(True, status, answer_headers, answer, delivery + 1)
            elif not retried(status):
                break
            if delivery < self.retry:
                await asyncio.sleep(waits[delivery])
        return Outcome(False, status, answer_headers, answer, delivery + 1)

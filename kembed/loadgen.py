"""A lean closed-loop HTTP/1.1 load generator (keep-alive, pre-encoded bodies), shared by bench/ and the planner.

httpx costs about a millisecond of CPU per request, which on a 2-core box steals from the server
being measured; raw asyncio streams cost a few microseconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    items: int = 0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, float]:
    """Sends one request; returns (status, Retry-After seconds or 0)."""
    writer.write(head + body)
    status_line = await reader.readline()
    length, retry_after = 0, 0.0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            retry_after = float(value)
    await reader.readexactly(length)
    return int(status_line.split()[1]), retry_after


async def closed_loop(
    port: int,
    path: str,
    bodies: list[tuple[bytes, int]],
    concurrency: int,
    seconds: float,
    content_type: str = "application/json",
    max_requests: int = 1_000_000,
    honour_retry_after: bool = False,
    host: str = "127.0.0.1",
) -> LoadResult:
    """`concurrency` clients each send the next (body, item count) as soon as the last answers
    (or, with `honour_retry_after`, after the pause a 429 asks for)."""
    result = LoadResult(seconds=0.0)
    next_index = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and next_index < max_requests:
                body, items = bodies[next_index % len(bodies)]
                next_index += 1
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                started = time.perf_counter()
                status, retry_after = await _post(reader, writer, head, body)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.items += items
                elif honour_retry_after and retry_after:
                    await asyncio.sleep(min(retry_after, max(0.0, deadline - time.perf_counter())))
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result

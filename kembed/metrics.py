"""Request metrics every kembed server exports (default registry, kserve's `/metrics`).

The edge records them for the predictor and the transformer alike, over REST (`protocol="rest"`,
`"openai"`) and gRPC (`"grpc"`), so one dashboard query reads every component and every hop.
`status` is the HTTP status of the answer; a gRPC answer is counted by the HTTP status it stands
for (400 for INVALID_ARGUMENT, 429 for RESOURCE_EXHAUSTED, ...), so one error-ratio query covers both.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from kembed.errors import status_of

REST, GRPC, OPENAI = "rest", "grpc", "openai"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "kembed_requests", "Embedding requests by protocol and final (HTTP) status.", ["model", "protocol", "status"]
)
REQUEST_DURATION = Histogram(
    "kembed_request_duration_seconds",
    "Time from request arrival to response, in seconds.",
    ["model", "protocol"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge(
    "kembed_requests_in_flight", "Embedding requests being answered right now.", ["model", "protocol"]
)


class Accounting:
    """Counts one request in flight while it runs, then by protocol and final status. The status is
    the exception's (see `status_of`) unless the caller sets `status` (an answer that is not raised)."""

    def __init__(self, model: str, protocol: str):
        self.labels = {"model": model, "protocol": protocol}
        self.status: int | None = None
        self._started = 0.0

    def __enter__(self) -> Accounting:
        self._started = time.perf_counter()
        REQUESTS_IN_FLIGHT.labels(**self.labels).inc()
        return self

    def __exit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> None:
        REQUESTS_IN_FLIGHT.labels(**self.labels).dec()
        status = self.status if self.status is not None and exc is None else status_of(exc)
        REQUESTS.labels(**self.labels, status=str(status)).inc()
        REQUEST_DURATION.labels(**self.labels).observe(time.perf_counter() - self._started)


def record(model: str, protocol: str, status: int) -> None:
    """A request answered before it reached the DataPlane (the transport's 413)."""
    REQUESTS.labels(model=model, protocol=protocol, status=str(status)).inc()

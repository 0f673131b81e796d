"""Request metrics every kembed server exports (default registry, kserve's `/metrics`).

The edge counts requests for the predictor and the transformer alike, so one dashboard query
reads both components.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "kembed_requests", "Embedding requests by final HTTP status.", ["model", "status"]
)
REQUEST_DURATION = Histogram(
    "kembed_request_duration_seconds",
    "Time from request arrival to response, in seconds.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)

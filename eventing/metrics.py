"""Prometheus metrics of the eventing service, served on its own `GET /metrics`.

Every delivery is counted once as received and then once as completed or failed, so
`received == completed + failed` (deduplicated deliveries are a subset of completed).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

RECEIVED = Counter("kembed_events_received", "Event deliveries received (every POST /).")
COMPLETED = Counter("kembed_events_completed", "Event deliveries answered with a reply event (incl. deduplicated).")
FAILED = Counter("kembed_events_failed", "Event deliveries answered with an error, by reason.", ["reason"])
DEDUPLICATED = Counter(
    "kembed_events_deduplicated", "Deliveries answered from an earlier or in-flight computation of the same event."
)
ITEMS_EMBEDDED = Counter("kembed_items_embedded", "Items embedded by the InferenceService for this service.")
CHUNK_SECONDS = Histogram(
    "kembed_chunk_seconds", "Duration of one V2 call (one chunk of items), in seconds.", buckets=CHUNK_BUCKETS
)
RETRIES = Counter(
    "kembed_eventing_retries", "Calls tried again inside the service after a 429/5xx, by call (chunk or part).",
    ["call"],
)
DEDUP_EVICTED = Counter(
    "kembed_dedup_evicted",
    "Events dropped from the redelivery store before their TTL (dedup_max_entries or dedup_max_bytes reached): "
    "a redelivery of one of them is computed again.",
)
DEDUP_BYTES = Gauge("kembed_dedup_bytes", "Bytes held by the redelivery store (replies, chunk results, unsent parts).")

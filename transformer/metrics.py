"""Prometheus metrics of the transformer, served on kserve's `/metrics` (default registry).

The request counters and latency histogram come from `kembed.metrics`, recorded by the shared edge
(kembed.edge's DataPlane, and the OpenAI route), so a dashboard reads both components with the same queries.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

TOKENIZE_SECONDS = Histogram(
    "kembed_tokenize_seconds",
    "Time spent in the tokenizer for one request's cache misses (one batched call), in seconds.",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PREDICTOR_SECONDS = Histogram(
    "kembed_predictor_request_seconds",
    "Time of one call to the predictor (the V2 hop and its forward passes), in seconds.",
    ["model", "protocol"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class CacheMetrics:
    """hits/misses/evictions counters and entries/bytes gauges of one cache, for one model."""

    def __init__(self, cache: str, model: str, entries: Callable[[], float], size: Callable[[], float]):
        self.hits = _COUNTERS[cache, "hits"].labels(model=model)
        self.misses = _COUNTERS[cache, "misses"].labels(model=model)
        self.evictions = _COUNTERS[cache, "evictions"].labels(model=model)
        _GAUGES[cache, "entries"].labels(model=model).set_function(entries)
        _GAUGES[cache, "bytes"].labels(model=model).set_function(size)


_DESCRIPTIONS = {
    "hits": "Lookups answered from the {cache} cache.",
    "misses": "Lookups the {cache} cache could not answer.",
    "evictions": "Entries dropped from the {cache} cache to stay within its entry and byte bounds.",
    "entries": "Entries held in the {cache} cache.",
    "bytes": "Approximate bytes held in the {cache} cache (texts plus values).",
}
_COUNTERS = {
    (cache, kind): Counter(f"kembed_{cache}_cache_{kind}", _DESCRIPTIONS[kind].format(cache=cache), ["model"])
    for cache in ("tokenizer", "embedding")
    for kind in ("hits", "misses", "evictions")
}
_GAUGES = {
    (cache, kind): Gauge(f"kembed_{cache}_cache_{kind}", _DESCRIPTIONS[kind].format(cache=cache), ["model"])
    for cache in ("tokenizer", "embedding")
    for kind in ("entries", "bytes")
}

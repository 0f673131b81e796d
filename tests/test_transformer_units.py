"""Unit tests of the transformer's parts that need no server: the LRU bounds, the token cache
(with the real bundled tokenizer), and how predictor failures map to client statuses."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from grpc.aio import AioRpcError, Metadata
from kserve.errors import InvalidInput

from kembed import client as upstream
from kembed.cli import bundled_model_dir
from kembed.tokenization import TextTokenizer
from transformer.lru import ByteBoundedLRU
from transformer.tokens import CachingTokenizer


def test_lru_evicts_least_recent_by_entry_count():
    cache: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_entries=2, max_bytes=1000)
    assert cache.put("a", 1, 10) == 0
    assert cache.put("b", 2, 10) == 0
    assert cache.get("a") == 1  # "a" is now the most recent, so "b" goes first
    assert cache.put("c", 3, 10) == 1
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2 and cache.bytes == 20


def test_lru_evicts_until_within_byte_budget():
    cache: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_entries=100, max_bytes=100)
    for index in range(4):
        cache.put(f"k{index}", index, 30)
    assert len(cache) == 3 and cache.bytes == 90 and "k0" not in cache
    assert cache.put("big", 9, 70) == 2  # needs room for 70 bytes: k1 and k2 leave
    assert sorted(cache._items) == ["big", "k3"] and cache.bytes == 100


def test_lru_refuses_an_entry_larger_than_the_budget_and_replaces_in_place():
    cache: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_entries=10, max_bytes=100)
    cache.put("a", 1, 40)
    assert cache.put("huge", 2, 101) == 0
    assert "huge" not in cache and cache.get("a") == 1
    cache.put("a", 3, 60)
    assert cache.get("a") == 3 and cache.bytes == 60 and len(cache) == 1


def test_lru_with_zero_bound_is_off():
    cache: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_entries=0, max_bytes=100)
    assert not cache.enabled
    cache.put("a", 1, 1)
    assert cache.get("a") is None and len(cache) == 0


@pytest.fixture(scope="module")
def short_tokenizer() -> TextTokenizer:
    return TextTokenizer(bundled_model_dir(), max_seq_length=8, truncate=False)


def test_token_cache_tokenizes_only_misses_and_names_the_request_item(short_tokenizer):
    tokens = CachingTokenizer(short_tokenizer, 100, 1 << 20, "unit")
    first = asyncio.run(tokens.encode(["a cat", "a dog", "a cat"], "text"))
    assert len(tokens.cache) == 2  # the repeated text was tokenized once
    assert first[0] is first[2]
    assert np.array_equal(first[1], short_tokenizer.encode(["a dog"])[0])
    again = asyncio.run(tokens.encode(["a dog"], "text"))
    assert again[0] is first[1]  # served from the cache, the same row object
    too_long = "one two three four five six seven eight nine ten"
    with pytest.raises(InvalidInput, match=r"input 'input' item 7 is longer than 8 tokens"):
        asyncio.run(tokens.encode(["a cat", too_long], "input", positions=[3, 7]))


def _status_error(status: int, body: dict, headers: dict | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://predictor:8080/v2/models/m/infer")
    response = httpx.Response(status, json=body, headers=headers, request=request)
    return httpx.HTTPStatusError("failed", request=request, response=response)


def test_predictor_http_errors_map_to_client_statuses():
    bad = upstream.from_http(_status_error(400, {"error": "input 'input_ids' has 300 items"}), "p:80")
    assert (bad.status, bad.message, bad.grpc_code) == (400, "input 'input_ids' has 300 items",
                                                        grpc.StatusCode.INVALID_ARGUMENT)
    full = upstream.from_http(_status_error(429, {"error": "queue full"}, {"Retry-After": "3"}), "p:80")
    assert (full.status, full.retry_after, full.grpc_code) == (429, 3, grpc.StatusCode.RESOURCE_EXHAUSTED)
    not_ready = upstream.from_http(_status_error(503, {"error": "Model with name m is not ready."}), "p:80")
    assert not_ready.status == 503 and "p:80" in not_ready.message
    broken = upstream.from_http(_status_error(500, {"error": "boom"}), "p:80")
    assert broken.status == 502 and "p:80" in broken.message
    down = upstream.from_http(httpx.ConnectError("connection refused"), "p:80")
    assert down.status == 503 and "p:80" in down.message
    slow = upstream.from_http(httpx.ReadTimeout("timed out"), "p:80")
    assert slow.status == 504 and slow.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 502),
    ],
)
def test_predictor_grpc_errors_map_to_client_statuses(code, status):
    error = upstream.from_grpc(AioRpcError(code, Metadata(), Metadata(("retry-after", "7")), details="why"), "p:81")
    assert error.status == status
    if status in (429, 503):
        assert error.retry_after == 7  # kembed's retry-after trailing metadata
    assert "why" in error.message
    if status >= 500:
        assert "p:81" in error.message

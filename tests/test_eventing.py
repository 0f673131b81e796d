"""End to end: the real predictor (bundled model) and the eventing service as real processes on 127.0.0.1,
events built and parsed with the cloudevents SDK, split results captured by a real HTTP sink."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from kserve.inference_client import InferenceRESTClient, RESTConfig
from prometheus_client.parser import text_string_to_metric_families

from eventing.reply import PART, PARTS, REQUEST_ID, REQUEST_SOURCE
from eventing.settings import COMPLETED_TYPE, REQUEST_TYPE, SUMMARY_TYPE
from kembed.contract import EmbedOptions, embeddings_from_response, text_request
from kembed.launch import Server, free_port, start_server
from tests.conftest import MODEL_NAME
from tests.http_threads import serving
from tests.reference import cosine_rows

SMALL_EVENT_BYTES = 65536
EVENT_SOURCE = "/kembed/eventing-tests"


def start_eventing(tmp_path: Path, name: str, inference_url: str, **env: str) -> Server:
    """`python -m eventing` as a real process; start_server passes --http_port (an alias of --port)."""
    return start_server(
        "eventing",
        [],
        tmp_path / f"{name}.log",
        env={"KEMBED_INFERENCE_URL": inference_url, "KEMBED_EVENT_SOURCE": EVENT_SOURCE, **env},
        ready_path="/healthz",
        timeout=60,
    )


@pytest.fixture(scope="module")
def eventing(predictor: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Small chunks (so even short events span several V2 calls), a small event limit, no K_SINK."""
    server = start_eventing(
        tmp_path_factory.mktemp("eventing"), "eventing", predictor.url,
        KEMBED_CHUNK_SIZE="4", KEMBED_PARALLELISM="3", KEMBED_MAX_EVENT_BYTES=str(SMALL_EVENT_BYTES),
    )
    yield server
    server.stop()


class CapturingSink(ThreadingHTTPServer):
    """A real HTTP sink on loopback that parses every POST with the cloudevents SDK."""

    def __init__(self):
        super().__init__(("127.0.0.1", free_port()), SinkHandler)
        self.events: list[tuple[CloudEvent, int]] = []
        self.refuse_next = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class SinkHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        sink: CapturingSink = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers["content-length"]))
        with sink.lock:
            if sink.refuse_next:
                sink.refuse_next -= 1
                self.send_response(500)
                self.end_headers()
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            ce_headers = {k: v for k, v in headers.items() if k.startswith("ce-") or k == "content-type"}
            size = len(body) + sum(len(k) + len(v) for k, v in ce_headers.items())
            sink.events.append((from_http(headers, body), size))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def sink() -> Iterator[CapturingSink]:
    with serving(CapturingSink()) as server:
        yield server


@pytest.fixture(scope="module")
def splitting(predictor: Server, sink: CapturingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Same small event limit, with K_SINK (as a SinkBinding would set) pointing at the capturing sink."""
    server = start_eventing(
        tmp_path_factory.mktemp("splitting"), "splitting", predictor.url,
        KEMBED_MAX_EVENT_BYTES=str(SMALL_EVENT_BYTES), KEMBED_PARALLELISM="4", K_SINK=sink.url,
        K_CE_OVERRIDES='{"extensions": {"kembedsplit": "true"}}', KEMBED_RETRY_AFTER_SECONDS="2",
        KEMBED_CALL_ATTEMPTS="4", KEMBED_CALL_BACKOFF_SECONDS="0.05",
    )
    yield server
    server.stop()


def request_event(data: dict, **attrs: str) -> CloudEvent:
    return CloudEvent({"type": REQUEST_TYPE, "source": "/tests/eventing", "subject": "handbook", **attrs}, data)


def post(server: Server, event: CloudEvent, structured: bool = False) -> httpx.Response:
    headers, body = (to_structured if structured else to_binary)(event)
    return httpx.post(server.url + "/", headers=headers, content=body, timeout=300)


def reply_of(response: httpx.Response) -> CloudEvent:
    assert response.status_code == 200, response.text
    return from_http(dict(response.headers), response.content)


def metric(server: Server, name: str, **labels: str) -> float:
    """Sum of a metric's samples matching ``labels``, read from the server's real /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


DEFAULT_OPTIONS = EmbedOptions()


def direct(predictor: Server, texts: list[str], options: EmbedOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """The same texts straight to the predictor over V2 (kserve's client), for comparison."""

    async def call() -> np.ndarray:
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=120)) as client:
            request = text_request(MODEL_NAME, texts, options)
            response = await client.infer(predictor.url, request, model_name=MODEL_NAME)
            return embeddings_from_response(response)

    return asyncio.run(call())


def vectors(reply: CloudEvent) -> np.ndarray:
    return np.array([item["embedding"] for item in reply.data["items"]], dtype=np.float32)


TEXTS = [
    "Knative scales the eventing service to zero between batches.",
    "A CloudEvent carries its data and attributes.",
    "Der Hund schläft im Garten.",
    "embeddings",
    "Batch embedding of a whole document set, published as one event.",
    "The broker retries with exponential backoff.",
    "Short.",
]


def test_binary_event_gets_a_completed_reply_equal_to_direct_predictor_calls(eventing, predictor):
    items = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(TEXTS)]
    event = request_event({"items": items})
    reply = reply_of(post(eventing, event))
    assert reply["type"] == COMPLETED_TYPE
    assert reply["source"] == EVENT_SOURCE
    assert reply["subject"] == "handbook"
    assert reply[REQUEST_ID] == event["id"]
    assert reply[REQUEST_SOURCE] == "/tests/eventing"
    assert (reply[PART], reply[PARTS]) == ("1", "1")
    assert reply["datacontenttype"] == "application/json"
    assert reply.data["model"] == MODEL_NAME
    assert reply.data["dimensions"] == 384
    assert [item["id"] for item in reply.data["items"]] == [item["id"] for item in items]
    got = vectors(reply)
    assert got.shape == (len(TEXTS), 384)
    assert cosine_rows(got, direct(predictor, TEXTS)).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_structured_event_with_plain_texts_and_options(eventing, predictor):
    options = EmbedOptions(normalize=False, dimensions=128)
    event = request_event({"texts": TEXTS[::-1], "normalize": False, "dimensions": 128})
    response = post(eventing, event, structured=True)
    assert response.headers["content-type"].startswith("application/cloudevents+json")
    reply = reply_of(response)
    assert reply["type"] == COMPLETED_TYPE
    assert reply[REQUEST_ID] == event["id"]
    assert reply.data["dimensions"] == 128
    assert [item["id"] for item in reply.data["items"]] == list(range(len(TEXTS)))
    got = vectors(reply)
    expected = direct(predictor, TEXTS[::-1], options)
    assert got.shape == expected.shape == (len(TEXTS), 128)
    assert cosine_rows(got, expected).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-3)


def test_redelivery_is_answered_without_computing_again(eventing, predictor):
    event = request_event({"texts": [f"redelivered text {i}" for i in range(10)]})
    first = post(eventing, event)
    assert first.status_code == 200
    embedded = metric(eventing, "kembed_items_embedded_total")
    predictor_requests = metric(predictor, "kembed_requests_total")
    deduplicated = metric(eventing, "kembed_events_deduplicated_total")
    second = post(eventing, event, structured=True)  # a redelivery may even use the other content mode
    assert second.status_code == 200
    assert second.content == first.content
    assert second.headers["ce-id"] == first.headers["ce-id"]
    assert metric(eventing, "kembed_items_embedded_total") == embedded
    assert metric(predictor, "kembed_requests_total") == predictor_requests
    assert metric(eventing, "kembed_events_deduplicated_total") == deduplicated + 1
    # A new id from the same source is a new event and is computed.
    third = post(eventing, request_event(event.data))
    assert third.status_code == 200 and third.headers["ce-id"] != first.headers["ce-id"]
    assert metric(eventing, "kembed_items_embedded_total") == embedded + 10


def test_concurrent_duplicates_compute_once(eventing):
    event = request_event({"texts": [f"concurrent text number {i}" for i in range(120)], "dimensions": 16})
    embedded = metric(eventing, "kembed_items_embedded_total")
    deduplicated = metric(eventing, "kembed_events_deduplicated_total")
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: post(eventing, event), range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({r.content for r in responses}) == 1
    assert metric(eventing, "kembed_items_embedded_total") == embedded + 120
    assert metric(eventing, "kembed_events_deduplicated_total") == deduplicated + 2


def test_large_event_is_chunked_and_split_into_parts_on_k_sink(splitting, sink, predictor):
    count = 1000
    items = [{"id": f"id-{i}", "text": f"item {i}"} for i in range(count)]
    event = request_event({"items": items, "dimensions": 32})
    chunks = metric(splitting, "kembed_chunk_seconds_count")
    sink.events.clear()
    summary = reply_of(post(splitting, event))
    assert summary["type"] == SUMMARY_TYPE
    assert summary[REQUEST_ID] == event["id"]
    assert summary["subject"] == "handbook"
    parts = [captured for captured, _ in sink.events]
    assert summary.data == {"model": MODEL_NAME, "dimensions": 32, "count": count, "parts": len(parts)}
    assert len(parts) > 1
    assert metric(splitting, "kembed_chunk_seconds_count") - chunks == -(-count // 64)  # default chunk size
    assert all(size <= SMALL_EVENT_BYTES for _, size in sink.events)
    assert sorted(int(part[PART]) for part in parts) == list(range(1, len(parts) + 1))
    for part in parts:
        assert part["type"] == COMPLETED_TYPE
        assert part["subject"] == "handbook"
        assert part[REQUEST_ID] == event["id"]
        assert part[PARTS] == str(len(parts))
        assert part["kembedsplit"] == "true"  # K_CE_OVERRIDES from the SinkBinding
        assert part.data["model"] == MODEL_NAME and part.data["dimensions"] == 32
    by_part = sorted(parts, key=lambda part: int(part[PART]))
    got_items = [item for part in by_part for item in part.data["items"]]
    assert [item["id"] for item in got_items] == [item["id"] for item in items]  # all present, once, in order
    sample = [0, 1, 2, 500, 998, 999]
    expected = direct(predictor, [items[i]["text"] for i in sample], EmbedOptions(dimensions=32))
    got = np.array([got_items[i]["embedding"] for i in sample], dtype=np.float32)
    assert cosine_rows(got, expected).min() >= 0.999


def test_a_refused_part_is_posted_again_within_the_same_delivery(splitting, sink):
    event = request_event({"texts": [f"refused once {i}" for i in range(300)], "dimensions": 64})
    sink.events.clear()
    sink.refuse_next = 1
    summary = reply_of(post(splitting, event))
    assert summary["type"] == SUMMARY_TYPE
    assert sorted(int(part[PART]) for part, _ in sink.events) == list(range(1, summary.data["parts"] + 1))


def test_a_sink_down_beyond_the_retries_is_a_503_and_knatives_retry_completes(splitting, sink):
    event = request_event({"texts": [f"retry {i}" for i in range(300)], "dimensions": 64})
    sink.events.clear()
    sink.refuse_next = 4  # every try of the first part (KEMBED_CALL_ATTEMPTS)
    failed = post(splitting, event)
    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "2"
    assert "K_SINK" in failed.json()["error"]
    assert sink.events == []
    summary = reply_of(post(splitting, event))  # Knative's retry: the failure was not stored
    assert summary["type"] == SUMMARY_TYPE
    first_ids = [part["id"] for part, _ in sink.events]
    assert len(first_ids) == summary.data["parts"] > 1


def test_non_ascii_attributes_travel_as_utf8_headers(splitting, sink):
    """Once a 500 (the parts' headers could not be encoded), retried by Knative 7 times. Knative's Go SDK
    writes and reads header values as UTF-8 bytes; the replies and parts carry them back the same way."""
    subject = "Über 日本"
    event = request_event({"texts": [f"non-ascii {i}" for i in range(300)], "dimensions": 64}, subject=subject)
    sink.events.clear()
    summary = reply_of(post(splitting, event, structured=True))
    assert summary["subject"] == subject
    wire = {part["subject"].encode("latin-1").decode("utf-8") for part, _ in sink.events}  # http.server: latin-1
    assert wire == {subject} and len(sink.events) == summary.data["parts"]
    headers, body = to_binary(request_event({"texts": ["x"]}))
    headers = {**headers, "ce-subject": subject.encode("utf-8")}
    response = httpx.post(splitting.url + "/", headers=headers, content=body, timeout=60)
    assert response.status_code == 200
    assert dict(response.headers.raw)[b"ce-subject"] == subject.encode("utf-8")
    headers["ce-subject"] = b"\xfc"  # latin-1, not UTF-8
    refused = httpx.post(splitting.url + "/", headers=headers, content=body, timeout=60)
    assert refused.status_code == 400 and "ce-subject is not UTF-8" in refused.json()["error"]


def test_too_large_without_k_sink_is_a_422_not_retried(eventing):
    response = post(eventing, request_event({"texts": [f"text {i}" for i in range(100)]}))
    assert response.status_code == 422
    assert "K_SINK" in response.json()["error"]
    assert metric(eventing, "kembed_events_failed_total", reason="too_large") >= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ({"content-type": "application/json"}, b'{"texts": ["x"]}'), "not a CloudEvent"),
        (lambda: ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0"'), "not a valid"),
        (lambda: to_binary(request_event({"items": [{"id": "a", "text": ""}]})), "data.items[0].text is empty"),
        (lambda: to_binary(request_event({"texts": ["x"]}, type="com.example.other")),
         f"expected '{REQUEST_TYPE}'"),
        (lambda: to_structured(request_event({"texts": ["x"], "dimensions": 1000})), "dimensions"),
        # Once a 500 (the reply's JSON cannot hold the id) and a 502 (the V2 call cannot encode the text),
        # which Knative retried 7 times; and an invisible text that embedded as [CLS][SEP].
        (lambda: to_binary(request_event({"items": [{"id": 123456789012345678901234567890, "text": "x"}]})),
         "data.items[0].id 123456789012345678901234567890 does not fit in 64 bits"),
        (lambda: to_binary(request_event({"texts": ["ok", "lone \ud800 surrogate"]})),
         "data.texts[1] contains a lone surrogate (U+D800)"),
        (lambda: to_structured(request_event({"texts": ["\u200b\u200b"]})), "data.texts[0] is empty"),
    ],
)
def test_malformed_events_are_400_with_a_message(eventing, make, message):
    headers, body = make()
    failed = metric(eventing, "kembed_events_failed_total")
    response = httpx.post(eventing.url + "/", headers=headers, content=body, timeout=60)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert "retry-after" not in response.headers
    assert metric(eventing, "kembed_events_failed_total") == failed + 1


def test_metrics_and_health(eventing):
    assert httpx.get(eventing.url + "/healthz").status_code == 200
    text = httpx.get(eventing.url + "/metrics").text
    for name in ("kembed_events_received_total", "kembed_events_completed_total", "kembed_events_deduplicated_total",
                 "kembed_items_embedded_total", "kembed_chunk_seconds_bucket"):
        assert name in text
    answered = metric(eventing, "kembed_events_completed_total") + metric(eventing, "kembed_events_failed_total")
    assert metric(eventing, "kembed_events_received_total") == answered


def test_predictor_down_is_503_with_retry_after_then_sigterm_exits_0(tmp_path):
    down = start_eventing(tmp_path, "down", f"http://127.0.0.1:{free_port()}", KEMBED_RETRY_AFTER_SECONDS="7",
                          KEMBED_CALL_BACKOFF_SECONDS="0.05",
                          KEMBED_MAX_REQUEST_BYTES="4096")
    try:
        response = post(down, request_event({"texts": ["nobody is listening"]}))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert "unreachable" in response.json()["error"]
        assert metric(down, "kembed_events_failed_total", reason="unavailable") == 1
        too_big = post(down, request_event({"texts": ["x" * 5000]}))
        assert too_big.status_code == 413
        assert "max_request_bytes" in too_big.json()["error"]
    finally:
        assert down.stop() == 0


def test_sigterm_finishes_the_event_in_flight_and_exits_0(predictor, tmp_path):
    server = start_eventing(tmp_path, "sigterm", predictor.url, KEMBED_PARALLELISM="1",
                            KEMBED_MAX_EVENT_BYTES=str(8 << 20))
    count = 600
    event = request_event({"texts": [f"in flight {i}" for i in range(count)]})
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, server, event)
            while metric(server, "kembed_items_embedded_total") == 0:  # the event is being computed
                assert not pending.done(), pending.result().text
                time.sleep(0.05)
            assert metric(server, "kembed_items_embedded_total") < count
            server.process.send_signal(signal.SIGTERM)
            reply = reply_of(pending.result())
        assert [item["id"] for item in reply.data["items"]] == list(range(count))
        assert server.process.wait(60) == 0
        assert "Finished server process" in server.log()
    finally:
        server.stop()


def test_failure_body_is_json_with_error_and_reason(eventing):
    """Knative forwards the body to the dead-letter sink (knativeerrordata): it says what was wrong."""
    response = post(eventing, request_event({"texts": []}))
    body = json.loads(response.content)
    assert body == {"error": "data.texts must be a non-empty list", "reason": "malformed"}

"""Partial failures: the eventing service (a real process) behind an in-test proxy that fails predictor
calls (503, connection resets, stalls, answers lost after the predictor computed them), in front of the
real predictor; a real HTTP sink that refuses some parts; and a broker that delivers like Knative's
(tests/knative.py: retries with backoff, then dead letter)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from eventing.reply import PART, PARTS, REQUEST_ID
from eventing.settings import SUMMARY_TYPE
from kembed.contract import EmbedOptions
from kembed.launch import Server, free_port
from tests.http_threads import serving
from tests.knative import Broker, backoff_schedule
from tests.reference import cosine_rows
from tests.test_eventing import direct, metric, post, reply_of, request_event, start_eventing

PART_HEADER = "ce-" + PART
Fault = str  # "ok", "503", "reset" (before forwarding), "lost" (forwarded, answer dropped), "stall"


class FaultyProxy(ThreadingHTTPServer):
    """Forwards to the predictor, or fails the call as ``fault(call number, body)`` says."""

    daemon_threads = True

    def __init__(self, upstream: str, stall_seconds: float):
        super().__init__(("127.0.0.1", free_port()), ProxyHandler)
        self.upstream = upstream
        self.stall_seconds = stall_seconds
        self.fault: Callable[[int, bytes], Fault] = lambda number, body: "ok"
        self.calls = 0
        self.faults: dict[Fault, int] = {}
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        proxy: FaultyProxy = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with proxy.lock:
            fault = proxy.fault(proxy.calls, body)
            proxy.calls += 1
            proxy.faults[fault] = proxy.faults.get(fault, 0) + 1
        if fault == "503":
            self.answer(503, b'{"error": "injected"}', {"Retry-After": "1"})
            return
        if fault == "stall":
            time.sleep(proxy.stall_seconds)
        if fault in ("reset", "stall"):
            self.reset()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
        upstream = proxy.client.post(proxy.upstream + self.path, headers=headers, content=body)
        if fault == "lost":
            self.reset()
            return
        self.answer(upstream.status_code, upstream.content, {"content-type": upstream.headers["content-type"]})

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def reset(self) -> None:
        """Closes with RST: the client sees a connection reset, no answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def log_message(self, *args):
        pass


class RecordingSink(ThreadingHTTPServer):
    """K_SINK: records every POST (ce-id, part number, body, headers, answer) and refuses as ``refuse`` says."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", free_port()), RecordingSinkHandler)
        self.refuse: Callable[[int, dict[str, str]], bool] = lambda number, headers: False
        self.posts: list[tuple[str, dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def accepted(self) -> list[tuple[str, dict[str, str], bytes, int]]:
        return [post for post in self.posts if post[3] == 202]


class RecordingSinkHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        sink: RecordingSink = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with sink.lock:
            status = 503 if sink.refuse(len(sink.posts), headers) else 202
            sink.posts.append((headers["ce-id"], headers, body, status))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy(predictor: Server) -> Iterator[FaultyProxy]:
    with serving(FaultyProxy(predictor.url, stall_seconds=2.0)) as server:
        yield server


@pytest.fixture(scope="module")
def sink() -> Iterator[RecordingSink]:
    with serving(RecordingSink()) as server:
        yield server


PART_BYTES = 8192


@pytest.fixture(scope="module")
def eventing(proxy: FaultyProxy, sink: RecordingSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Chunks of 4, parts of at most 8 KiB, 1.5 s per V2 call (a stall times out), short backoffs."""
    server = start_eventing(
        tmp_path_factory.mktemp("faults"), "faults", proxy.url,
        KEMBED_CHUNK_SIZE="4", KEMBED_PARALLELISM="8", KEMBED_MAX_EVENT_BYTES=str(PART_BYTES), K_SINK=sink.url,
        KEMBED_REQUEST_TIMEOUT_SECONDS="1.5", KEMBED_CALL_ATTEMPTS="4", KEMBED_CALL_BACKOFF_SECONDS="0.05",
    )
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_faults(proxy: FaultyProxy, sink: RecordingSink) -> Iterator[None]:
    yield
    proxy.fault = lambda number, body: "ok"
    sink.refuse = lambda number, headers: False


def test_a_failed_chunk_is_retried_inside_the_service(eventing, proxy, predictor):
    texts = [f"retried inside {i}" for i in range(8)]
    first = proxy.calls
    proxy.fault = lambda number, body: "503" if number == first else "ok"
    retries = metric(eventing, "kembed_eventing_retries_total", call="chunk")
    reply = reply_of(post(eventing, request_event({"texts": texts, "dimensions": 32})))  # one delivery
    assert metric(eventing, "kembed_eventing_retries_total", call="chunk") >= retries + 1  # (+1 more if loaded)
    got = np.array([item["embedding"] for item in reply.data["items"]], dtype=np.float32)
    assert cosine_rows(got, direct(predictor, texts, EmbedOptions(dimensions=32))).min() >= 0.999


def test_chunks_that_succeeded_survive_a_redelivery(eventing, proxy, predictor):
    texts = [f"surviving chunk text {i}" for i in range(12)]  # three chunks of four
    texts[5] = "POISON: the predictor fails every call with this text"
    proxy.fault = lambda number, body: "503" if b"POISON" in body else "ok"
    event = request_event({"texts": texts, "dimensions": 32})
    embedded = metric(eventing, "kembed_items_embedded_total")
    failed = post(eventing, event)
    assert failed.status_code == 503 and failed.headers["retry-after"]
    assert metric(eventing, "kembed_items_embedded_total") == embedded + 8  # the other two chunks finished
    requested: list[bytes] = []
    proxy.fault = lambda number, body: requested.append(body) or "ok"
    reply = reply_of(post(eventing, event))  # Knative's redelivery
    assert requested and all(b"POISON" in body for body in requested)  # only the chunk that had failed
    assert metric(eventing, "kembed_items_embedded_total") == embedded + 12
    assert [item["id"] for item in reply.data["items"]] == list(range(12))
    got = np.array([item["embedding"] for item in reply.data["items"]], dtype=np.float32)
    assert cosine_rows(got, direct(predictor, texts, EmbedOptions(dimensions=32))).min() >= 0.999


def test_accepted_parts_are_not_posted_again_and_a_part_keeps_its_bytes(eventing, sink):
    event = request_event({"texts": [f"part bytes {i}" for i in range(60)], "dimensions": 32})
    start = len(sink.posts)
    sink.refuse = lambda number, headers: headers[PART_HEADER] == "2"
    failed = post(eventing, event)
    assert failed.status_code == 503 and "K_SINK" in failed.json()["error"]
    first = sink.posts[start:]
    assert [(post[1][PART_HEADER], post[3]) for post in first] == [("1", 202)] + [("2", 503)] * 4  # 4 tries
    sink.refuse = lambda number, headers: False
    summary = reply_of(post(eventing, event))
    assert summary["type"] == SUMMARY_TYPE
    second = sink.posts[start + len(first):]
    parts = summary.data["parts"]
    assert [post[1][PART_HEADER] for post in second] == [str(n) for n in range(2, parts + 1)]  # not part 1
    by_id: dict[str, set[tuple[bytes, str]]] = {}
    for ce_id, headers, body, _ in first + second:
        by_id.setdefault(ce_id, set()).add((body, headers["ce-time"]))
    assert all(len(versions) == 1 for versions in by_id.values())  # the same body and time on every try
    assert len(by_id) == parts


EVENTS = 120
LOSE_EVERY = 10  # every 10th event's first reply is dropped, as if the dispatcher had timed out


def storm_events() -> list[CloudEvent]:
    """A quarter large enough to go to K_SINK in parts (24 items), the rest one reply (8 items)."""
    events = []
    for number in range(EVENTS):
        count = 24 if number % 4 == 0 else 8
        items = [{"id": f"e{number}-{i}", "text": f"storm event {number}, item {i}: some words"} for i in range(count)]
        events.append(request_event({"items": items, "dimensions": 32}, id=f"storm-{number}"))
    return events


def half_fail(number: int, body: bytes) -> Fault:
    """Every other call fails: 503, reset, answer lost after the predictor computed it, or a stall."""
    return ("ok", "503", "ok", "reset", "ok", "lost", "ok", "503", "ok", "reset", "ok", "lost", "ok", "503",
            "ok", "stall")[number % 16]


def test_a_storm_of_events_through_a_predictor_failing_half_its_calls(eventing, proxy, sink, predictor):
    events = storm_events()
    total_items = sum(len(event.data["items"]) for event in events)
    embedded = metric(eventing, "kembed_items_embedded_total")
    deduplicated = metric(eventing, "kembed_events_deduplicated_total")
    start = len(sink.posts)
    proxy.fault = half_fail
    sink.refuse = lambda number, headers: number % 5 == 4  # and the sink refuses a fifth of the POSTs
    broker = Broker(
        eventing.url + "/", retry=6, delay_seconds=0.05, timeout_seconds=120,
        lose_first_reply={event["id"] for number, event in enumerate(events) if number % LOSE_EVERY == 0},
    )
    deliveries = [(event["id"], *to_binary(event)) for event in events]
    outcomes = asyncio.run(broker.deliver_all(deliveries))
    proxy.fault = lambda number, body: "ok"
    print(f"{len(events)} events, {sum(o.deliveries for o in outcomes.values())} deliveries, "
          f"{sum(not o.replied for o in outcomes.values())} dead-lettered; predictor calls {proxy.faults}; "
          f"sink POSTs {len(sink.posts) - start}")

    # Every event ended exactly once: replied, or dead-lettered after the whole retry schedule.
    assert sorted(outcomes) == sorted(event["id"] for event in events)
    dead = {event_id: outcome for event_id, outcome in outcomes.items() if not outcome.replied}
    assert len(dead) <= 2, {event_id: (o.status, o.body[:200]) for event_id, o in dead.items()}
    assert all(outcome.deliveries == 7 for outcome in dead.values())
    assert proxy.faults["ok"] < proxy.calls * 0.6  # the faults really happened
    assert metric(eventing, "kembed_eventing_retries_total", call="part") > 0

    # No chunk was computed twice: every chunk that succeeded was kept for the event's later deliveries.
    assert metric(eventing, "kembed_items_embedded_total") - embedded <= total_items
    if not dead:
        assert metric(eventing, "kembed_items_embedded_total") - embedded == total_items

    # A lost reply's redelivery got the stored reply, byte for byte.
    for event_id, lost in broker.lost.items():
        if outcomes[event_id].replied:
            assert outcomes[event_id].body == lost
    assert metric(eventing, "kembed_events_deduplicated_total") - deduplicated >= len(broker.lost) - len(dead)

    # Every part id was accepted once and carried one body on every POST.
    posts = sink.posts[start:]
    bodies: dict[str, set[bytes]] = {}
    accepted: dict[str, int] = {}
    for ce_id, _, body, status in posts:
        bodies.setdefault(ce_id, set()).add(body)
        accepted[ce_id] = accepted.get(ce_id, 0) + (status == 202)
    assert all(len(versions) == 1 for versions in bodies.values())
    assert max(accepted.values()) == 1  # a part the sink accepted is not posted again

    # Every reply is complete and in order; a sample matches the predictor called directly.
    parts_by_request: dict[str, list[CloudEvent]] = {}
    for _, headers, body, status in posts:
        if status == 202:
            part = from_http(headers, body)
            parts_by_request.setdefault(part[REQUEST_ID], []).append(part)
    for event in events:
        outcome = outcomes[event["id"]]
        if not outcome.replied:
            continue
        reply = from_http(outcome.headers, outcome.body)
        if reply["type"] == SUMMARY_TYPE:
            parts = sorted(parts_by_request[event["id"]], key=lambda part: int(part[PART]))
            assert [part[PART] for part in parts] == [str(n) for n in range(1, reply.data["parts"] + 1)]
            assert {part[PARTS] for part in parts} == {str(reply.data["parts"])}
            items = [item for part in parts for item in part.data["items"]]
        else:
            items = reply.data["items"]
        assert [item["id"] for item in items] == [item["id"] for item in event.data["items"]]
        if event["id"] in ("storm-0", "storm-1", "storm-117"):
            got = np.array([item["embedding"] for item in items], dtype=np.float32)
            texts = [item["text"] for item in event.data["items"]]
            assert cosine_rows(got, direct(predictor, texts, EmbedOptions(dimensions=32))).min() >= 0.999


def test_the_broker_waits_as_knative_does():
    """tests/knative.py's schedule: retry 6 with PT1S waits 1..32 s (go-retryablehttp counts from 0)."""
    assert backoff_schedule(6, "exponential", 1.0) == [1, 2, 4, 8, 16, 32]
    assert backoff_schedule(3, "linear", 2.0) == [0, 2, 4]

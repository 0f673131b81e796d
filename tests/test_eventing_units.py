"""Unit tests of the eventing service's parts: event parsing, reply planning, idempotency, settings.

These run in-process (no servers); the end-to-end behaviour is in tests/test_eventing.py.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from eventing.dedup import Deduplicator
from eventing.errors import EventFailure
from eventing.reply import PART, PARTS, REQUEST_ID, plan_reply
from eventing.request import EmbedJob, parse_job
from eventing.retry import backoff_seconds, with_retries
from eventing.settings import COMPLETED_TYPE, REQUEST_TYPE, SUMMARY_TYPE, Settings, build_parser, settings_from_args

ITEMS = {"items": [{"id": "a", "text": "first"}, {"id": 7, "text": "second"}], "normalize": False, "dimensions": 8}


def request_event(data: object, **attrs: str) -> CloudEvent:
    return CloudEvent({"type": REQUEST_TYPE, "source": "/tests", "subject": "docs", **attrs}, data)


def parse(headers: dict[str, str], body: bytes | str | None, max_items: int = 100) -> EmbedJob:
    return parse_job(headers, body.encode() if isinstance(body, str) else body or b"", REQUEST_TYPE, max_items)


@pytest.mark.parametrize("encode", [to_binary, to_structured])
def test_parses_items_in_both_modes(encode):
    event = request_event(ITEMS)
    job = parse(*encode(event))
    assert job.ids == ["a", 7]
    assert job.texts == ["first", "second"]
    assert (job.options.normalize, job.options.dimensions) == (False, 8)
    assert job.key == ("/tests", event["id"])
    assert job.structured == (encode is to_structured)


def test_prompt_fields_reach_the_request_options():
    job = parse(*to_binary(request_event({"texts": ["x"], "prompt_name": "query"})))
    assert (job.options.prompt_name, job.options.prompt) == ("query", None)
    job = parse(*to_binary(request_event({"texts": ["x"], "prompt": ""})))
    assert (job.options.prompt_name, job.options.prompt) == (None, "")
    assert job.options.to_parameters() == {"prompt": ""}


def test_plain_texts_get_their_positions_as_ids():
    job = parse(*to_binary(request_event({"texts": ["x", "y", "z"]})))
    assert job.ids == [0, 1, 2]
    assert job.options.normalize is None and job.options.dimensions is None


MALFORMED = [
    ({"items": []}, "data.items must be a non-empty list"),
    ({"texts": "abc"}, "data.texts must be a non-empty list"),
    ({"items": [{"id": "a", "text": "x"}], "texts": ["y"]}, "exactly one of 'items' or 'texts'"),
    ({}, "exactly one of 'items' or 'texts'"),
    ({"items": [{"id": "a"}]}, "data.items[0].text must be a string"),
    ({"items": [{"id": "a", "text": "   "}]}, "data.items[0].text is empty"),
    ({"items": [{"id": "a", "text": "\u200b\u2060\ufeff \u200d"}]}, "data.items[0].text is empty"),
    ({"texts": ["ok", "\x00\u0301"]}, "data.texts[1] is empty"),
    ({"texts": ["half a pair: \ud83d"]}, "data.texts[0] contains a lone surrogate (U+D83D) at character 13"),
    ({"items": [{"id": "\udc00", "text": "x"}]}, "data.items[0].id contains a lone surrogate"),
    ({"items": [{"id": 123456789012345678901234567890, "text": "x"}]}, "does not fit in 64 bits"),
    ({"items": [{"id": -(2**63) - 1, "text": "x"}]}, "does not fit in 64 bits"),
    ({"items": [{"text": "x"}]}, "data.items[0].id must be a non-empty string or an integer"),
    ({"items": [{"id": True, "text": "x"}]}, "data.items[0].id must be"),
    ({"items": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "data.items[1].id 'a' is a duplicate"),
    ({"items": ["x"]}, "data.items[0] must be an object"),
    ({"items": [{"id": "a", "text": "x", "meta": 1}]}, "unknown field(s) ['meta'] in data.items[0]"),
    ({"texts": ["x"], "normalise": True}, "unknown field(s) ['normalise'] in data"),
    ({"texts": ["x"], "normalize": "yes"}, "data.normalize must be true, false or null"),
    ({"texts": ["x"], "dimensions": 0}, "data.dimensions must be a positive integer"),
    ({"texts": ["x"], "dimensions": "64"}, "data.dimensions must be a positive integer"),
    ({"texts": ["x"] * 101}, "data.texts has 101 items: at most 100"),
    ({"texts": ["x"], "prompt_name": 3}, "data.prompt_name must be a string or null"),
    ([1, 2], "event data must be a JSON object"),
    (None, "event has no data"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_data_is_a_400_naming_the_field(data, message):
    with pytest.raises(EventFailure) as failure:
        parse(*to_binary(request_event(data)))
    assert failure.value.status == 400
    assert message in failure.value.message


def test_wrong_type_names_the_expected_type():
    with pytest.raises(EventFailure) as failure:
        parse(*to_binary(request_event(ITEMS, type="com.example.other")))
    assert failure.value.status == 400
    assert failure.value.reason == "wrong_type"
    assert f"expected '{REQUEST_TYPE}'" in failure.value.message


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"content-type": "application/json"}, b'{"texts": ["x"]}', "not a CloudEvent"),
        ({"content-type": "application/cloudevents+json"}, b"{not json", "not a valid CloudEvent"),
        ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "type": "t"}', "not a valid"),
        ({"ce-specversion": "0.9", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-id": "1"}, b"{}", "not a valid"),
        ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batched CloudEvents are not accepted"),
        ({"ce-specversion": "1.0", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-id": "1",
          "content-type": "text/plain"}, b"hello", "event data must be a JSON object"),
    ],
)
def test_not_a_cloudevent_is_a_400(headers, body, message):
    with pytest.raises(EventFailure) as failure:
        parse(headers, body)
    assert failure.value.status == 400
    assert message in failure.value.message


def test_header_bytes_are_read_as_utf8_and_written_back_the_same_way():
    headers, body = to_binary(request_event({"texts": ["x"] * 40}))
    raw = "Über 日本".encode().decode("latin-1")  # what a server hands over for UTF-8 header bytes
    job = parse({**headers, "ce-subject": raw}, body, 100)
    assert job.event["subject"] == "Über 日本"
    plan = plan_reply(job, np.ones((40, 64), dtype=np.float32) / 8, make_settings(max_event_bytes=8192, sink="http://s/"))
    assert len(plan.parts) > 1
    for event in (plan.reply, *plan.parts):
        assert event.headers["ce-subject"] == raw
        assert all(len(value.encode("latin-1")) == len(value) for value in event.headers.values())
    with pytest.raises(EventFailure, match="header ce-subject is not UTF-8"):
        parse({**headers, "ce-subject": "\xfc"}, body)


def test_a_lone_surrogate_in_a_copied_attribute_is_a_400():
    headers, body = to_structured(request_event({"texts": ["x"]}, subject="\ud800"))
    with pytest.raises(EventFailure, match="subject contains a lone surrogate"):
        parse(headers, body)


HEADER_NAMES = st.sampled_from(
    ["ce-specversion", "ce-type", "ce-source", "ce-id", "ce-subject", "content-type", "ce-time", "ce-x"]
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(HEADER_NAMES, st.text(max_size=40) | st.sampled_from(["1.0", REQUEST_TYPE,
                            "application/json", "application/cloudevents+json"]), max_size=8),
    body=st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(["items", "texts", "id", "text", "normalize", "dimensions", "specversion", "data"]),
            inner, max_size=4),
        max_leaves=12)),
)
def test_any_request_is_a_job_or_a_400(headers, body):
    """Whatever arrives, parsing ends in a job or a 400 — never another exception (which would be a 500)."""
    try:
        job = parse(headers, body)
    except EventFailure as failure:
        assert failure.status == 400 and failure.message
    else:
        assert job.texts and len(job.ids) == len(job.texts)


@pytest.mark.parametrize("body", [b"null", b"[1, 2]", b"3"])
def test_a_structured_body_that_is_not_a_json_object_is_a_400(body):
    """Found by the property test above: with ce-* headers beside a structured content type, the SDK
    reads the body as an object without checking and fails with AttributeError (a 500 had it escaped)."""
    headers = {"content-type": "application/cloudevents+json", "ce-specversion": "1.0", "ce-type": "",
               "ce-source": "", "ce-id": ""}
    with pytest.raises(EventFailure) as failure:
        parse(headers, body)
    assert failure.value.status == 400
    assert "structured-mode body must be a JSON object" in failure.value.message


def make_settings(**overrides: object) -> Settings:
    return Settings(inference_url="http://127.0.0.1:1", **overrides)


def job_of(count: int, structured: bool = False) -> EmbedJob:
    items = [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(count)]
    encode = to_structured if structured else to_binary
    return parse(*encode(request_event({"items": items})), max_items=count)


def decode(headers: dict[str, str], body: bytes) -> CloudEvent:
    return from_http(headers, body)


@pytest.mark.parametrize("structured", [False, True])
def test_a_reply_that_fits_is_one_completed_event(structured):
    job = job_of(3, structured)
    vectors = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    plan = plan_reply(job, vectors, make_settings(max_event_bytes=1 << 20))
    assert plan.parts == []
    reply = decode(plan.reply.headers, plan.reply.body)
    assert reply["type"] == COMPLETED_TYPE
    assert reply["subject"] == "docs"
    assert reply[REQUEST_ID] == job.event["id"]
    assert (reply[PART], reply[PARTS]) == ("1", "1")
    assert [item["id"] for item in reply.data["items"]] == job.ids
    got = np.array([item["embedding"] for item in reply.data["items"]], dtype=np.float32)
    np.testing.assert_array_equal(got, vectors)  # float32 values survive the JSON round trip exactly
    assert plan.reply.headers["content-type"].startswith(
        "application/cloudevents+json" if structured else "application/json")


def test_a_large_reply_without_sink_is_a_422():
    job = job_of(200)
    vectors = np.ones((200, 64), dtype=np.float32) / 3
    with pytest.raises(EventFailure) as failure:
        plan_reply(job, vectors, make_settings(max_event_bytes=8192))
    assert failure.value.status == 422
    assert "K_SINK" in failure.value.message


def test_a_large_reply_is_split_into_parts_within_the_limit():
    limit = 8192
    job = job_of(200)
    vectors = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    settings_ = make_settings(max_event_bytes=limit, sink="http://127.0.0.1:9/", ce_overrides={"kembedsplit": "yes"})
    plan = plan_reply(job, vectors, settings_)
    assert len(plan.parts) > 1
    events = [decode(part.headers, part.body) for part in plan.parts]
    assert all(part.size <= limit for part in plan.parts)
    assert [event[PART] for event in events] == [str(i) for i in range(1, len(events) + 1)]
    assert {event[PARTS] for event in events} == {str(len(events))}
    assert {event["kembedsplit"] for event in events} == {"yes"}
    assert len({event["id"] for event in events}) == len(events)
    ids = [item["id"] for event in events for item in event.data["items"]]
    assert ids == job.ids
    got = np.array([item["embedding"] for event in events for item in event.data["items"]], dtype=np.float32)
    np.testing.assert_array_equal(got, vectors)
    # Greedy packing: no part could have taken the next part's first item.
    for part, following in zip(plan.parts, events[1:], strict=False):
        first = orjson.dumps(following.data["items"][0])
        assert part.size + len(first) + 1 > limit
    summary = decode(plan.reply.headers, plan.reply.body)
    assert summary["type"] == SUMMARY_TYPE
    assert summary.data == {"model": "minilm", "dimensions": 64, "count": 200, "parts": len(events)}
    # Deterministic ids: a retried split sends the same part ids again.
    again = plan_reply(job, vectors, settings_)
    assert [decode(p.headers, p.body)["id"] for p in again.parts] == [event["id"] for event in events]


def test_an_item_too_large_for_any_part_is_a_422():
    job = job_of(2)
    with pytest.raises(EventFailure) as failure:
        plan_reply(job, np.full((2, 2000), 1 / 3, dtype=np.float32), make_settings(max_event_bytes=4096, sink="http://x/"))
    assert failure.value.status == 422
    assert "data.items[0] alone needs" in failure.value.message


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def dedup(ttl: float = 60, max_entries: int = 10, max_bytes: int = 1 << 20, clock=None) -> Deduplicator:
    """States are lists of what each attempt saw; a state's size is 10 bytes per element."""
    return Deduplicator(ttl, max_entries, max_bytes, list, lambda state: 10 * len(state), clock or FakeClock())


def test_concurrent_duplicates_share_one_computation():
    async def scenario():
        store = dedup()
        release = asyncio.Event()
        calls = []

        async def compute(state):
            calls.append(1)
            await release.wait()
            return "reply"

        first = asyncio.create_task(store.run("k", compute))
        second = asyncio.create_task(store.run("k", compute))
        await asyncio.sleep(0.01)
        assert not first.done() and not second.done()  # the second is waiting on the first computation
        release.set()
        return await first, await second, calls

    first, second, calls = asyncio.run(scenario())
    assert first == ("reply", False)
    assert second == ("reply", True)
    assert len(calls) == 1


def test_a_failed_attempt_leaves_its_state_to_the_next():
    """A retry computes again (a failure is not a reply), but on what the failed attempt achieved."""
    async def scenario():
        store = dedup()

        async def flaky(state):
            state.append(len(state))
            if len(state) == 1:
                raise EventFailure(503, "unavailable", "down", 1)
            return list(state)

        with pytest.raises(EventFailure):
            await store.run("k", flaky)
        await asyncio.sleep(0)
        again = await store.run("k", flaky)
        await asyncio.sleep(0)
        return again, await store.run("k", flaky)

    assert asyncio.run(scenario()) == (([0, 1], False), ([0, 1], True))


def test_entries_expire_after_the_ttl_and_beyond_the_count_and_byte_bounds():
    async def scenario():
        clock = FakeClock()
        store = dedup(ttl=10, max_entries=2, clock=clock)
        counts: dict[str, int] = {}

        def compute(key, size=1):
            async def run(state):
                counts[key] = counts.get(key, 0) + 1
                state.extend([key] * size)
                return key
            return run

        async def run(key, size=1, into=store):
            result = await into.run(key, compute(key, size))
            await asyncio.sleep(0)  # the done callback stores it
            return result

        await run("a")
        clock.now = 9
        assert await run("a") == ("a", True)
        clock.now = 11
        assert await run("a") == ("a", False)  # expired: computed again
        evicted = REGISTRY.get_sample_value("kembed_dedup_evicted_total")
        for key in ("b", "c"):
            await run(key)
        assert len(store) == 2  # "a" (the oldest) was evicted for the count
        assert await run("a") == ("a", False)
        small = dedup(max_bytes=25)
        for key, size in (("x", 1), ("y", 1), ("z", 2)):
            await run(key, size, into=small)
        assert len(small) == 1 and small.bytes == 20  # 40 bytes held: the two oldest went
        assert REGISTRY.get_sample_value("kembed_dedup_evicted_total") - evicted == 4
        return counts

    assert asyncio.run(scenario()) == {"a": 3, "b": 1, "c": 1, "x": 1, "y": 1, "z": 1}


def test_an_attempt_in_flight_is_never_evicted():
    async def scenario():
        store = dedup(max_entries=0)
        release = asyncio.Event()

        async def slow(state):
            await release.wait()
            return "slow"

        pending = asyncio.create_task(store.run("slow", slow))
        await asyncio.sleep(0)
        await store.run("other", lambda state: asyncio.sleep(0, "other"))
        assert len(store) == 1  # "other" went, "slow" stays while it runs
        joined = asyncio.create_task(store.run("slow", slow))
        release.set()
        return await pending, await joined

    assert asyncio.run(scenario()) == (("slow", False), ("slow", True))


def test_retries_cure_transient_failures_within_the_bound():
    async def scenario(failures: list[EventFailure], attempts: int):
        calls = []

        async def call():
            calls.append(1)
            if len(calls) <= len(failures):
                raise failures[len(calls) - 1]
            return "ok"

        try:
            return await with_retries(call, attempts, 0.0, "chunk"), len(calls)
        except EventFailure as failure:
            return failure.status, len(calls)

    transient = [EventFailure(503, "unavailable", "down", 1), EventFailure(429, "overloaded", "busy", 1),
                 EventFailure(502, "bad_upstream", "garbled")]
    assert asyncio.run(scenario(transient, 4)) == ("ok", 4)
    assert asyncio.run(scenario(transient, 3)) == (502, 3)  # bounded: the last failure is the event's
    assert asyncio.run(scenario([EventFailure(400, "rejected", "bad text")], 4)) == (400, 1)  # not retried


def test_backoff_doubles_with_jitter_in_its_upper_half():
    for attempt in range(4):
        waits = [backoff_seconds(attempt, 0.5) for _ in range(200)]
        assert 0.25 * 2**attempt <= min(waits) < max(waits) <= 0.5 * 2**attempt


def test_every_knob_reads_its_env_var(monkeypatch):
    values = {
        "KEMBED_INFERENCE_URL": "http://isvc.example/", "KEMBED_MODEL_NAME": "other", "KEMBED_REQUEST_TYPE": "t.x",
        "KEMBED_EVENT_SOURCE": "/src", "KEMBED_MAX_ITEMS": "7", "KEMBED_CHUNK_SIZE": "3", "KEMBED_PARALLELISM": "2",
        "KEMBED_MAX_EVENT_BYTES": "5000", "KEMBED_MAX_REQUEST_BYTES": "999", "KEMBED_DEDUP_TTL_SECONDS": "1.5",
        "KEMBED_DEDUP_MAX_ENTRIES": "4", "KEMBED_REQUEST_TIMEOUT_SECONDS": "2.5", "KEMBED_RETRY_AFTER_SECONDS": "9",
        "KEMBED_DEDUP_MAX_BYTES": "4096", "KEMBED_CALL_ATTEMPTS": "2", "KEMBED_CALL_BACKOFF_SECONDS": "0.1",
        "K_SINK": "http://broker.example/", "K_CE_OVERRIDES": '{"extensions": {"team": "a"}}', "PORT": "9999",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([])
    assert args.port == 9999
    assert settings_from_args(args) == Settings(
        inference_url="http://isvc.example", model_name="other", request_type="t.x", event_source="/src",
        max_items=7, chunk_size=3, parallelism=2, max_event_bytes=5000, max_request_bytes=999,
        dedup_ttl_seconds=1.5, dedup_max_entries=4, request_timeout_seconds=2.5, retry_after_seconds=9,
        dedup_max_bytes=4096, call_attempts=2, call_backoff_seconds=0.1,
        sink="http://broker.example/", port=9999, ce_overrides={"team": "a"},
    )
    assert build_parser().parse_args(["--http_port", "1234", "--grpc_port", "5"]).port == 1234


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "KEMBED_INFERENCE_URL"),
        (["--inference_url", "isvc:8080"], "http(s) URL"),
        (["--inference_url", "http://x", "--chunk_size", "0"], "--chunk_size must be at least 1"),
        (["--inference_url", "http://x", "--max_event_bytes", "100"], "--max_event_bytes must be at least 4096"),
    ],
)
def test_bad_settings_are_refused_at_startup(monkeypatch, flags, message):
    monkeypatch.delenv("KEMBED_INFERENCE_URL", raising=False)
    monkeypatch.delenv("K_SINK", raising=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from_args(build_parser().parse_args(flags))

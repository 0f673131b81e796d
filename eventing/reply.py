"""Reply events: one `completed` event, or `completed` parts for K_SINK plus a small summary.

Sizes are measured on the encoded event (HTTP body plus CloudEvents headers), and parts are packed
from exact per-item sizes, so every event sent stays within `max_event_bytes`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from eventing.errors import EventFailure
from eventing.request import EmbedJob
from eventing.settings import COMPLETED_TYPE, SUMMARY_TYPE, Settings

REQUEST_ID = "kembedrequestid"
REQUEST_SOURCE = "kembedrequestsource"
PART = "part"
PARTS = "parts"
JSON = "application/json"
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/kembed/kembed/eventing")


@dataclass(frozen=True)
class Encoded:
    """An event as HTTP: what is sent, and what a size limit is measured on."""

    headers: dict[str, str]  # latin-1 text: one character per byte on the wire
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(key) + len(value) for key, value in self.headers.items())


@dataclass(frozen=True)
class Plan:
    """What to answer the delivery with, and the parts to POST to K_SINK first (possibly none)."""

    reply: Encoded
    parts: list[Encoded] = field(default_factory=list)


def encode(event: CloudEvent, structured: bool) -> Encoded:
    """Header values are the UTF-8 bytes of the attributes, held as latin-1 text: what HTTP servers and
    clients write byte for byte (starlette; `Sink.send`), and what Knative's Go SDK reads as UTF-8."""
    if structured:
        headers, body = to_structured(event)
    else:
        headers, body = to_binary(event, data_marshaller=orjson.dumps)
    wire = {name: value if value.isascii() else value.encode().decode("latin-1") for name, value in headers.items()}
    return Encoded(wire, body.encode() if isinstance(body, str) else body)


def event_id(job: EmbedJob, suffix: str) -> str:
    """Deterministic, so a retried split sends parts with the ids consumers already saw."""
    return str(uuid.uuid5(ID_NAMESPACE, "\x00".join((job.event["source"], job.event["id"], suffix))))


def attributes(job: EmbedJob, settings: Settings, event_type: str, suffix: str, **extensions: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "type": event_type,
        "source": settings.event_source,
        "id": event_id(job, suffix),
        "datacontenttype": JSON,
        REQUEST_ID: job.event["id"],
        REQUEST_SOURCE: job.event["source"],
        # Extension values as strings: binary mode carries them as headers (the SDK does not convert).
        **{name: str(value) for name, value in extensions.items()},
    }
    subject = job.event.get("subject")
    if subject is not None:
        attrs["subject"] = subject
    return attrs


def plan_reply(job: EmbedJob, embeddings: np.ndarray, settings: Settings) -> Plan:
    """One completed reply when it fits, else parts for K_SINK and a summary (422 without K_SINK)."""
    rows = orjson.loads(orjson.dumps(embeddings, option=orjson.OPT_SERIALIZE_NUMPY))
    items = [{"id": item_id, "embedding": row} for item_id, row in zip(job.ids, rows, strict=True)]
    header = {"model": settings.model_name, "dimensions": int(embeddings.shape[1])}
    single = encode(
        CloudEvent(attributes(job, settings, COMPLETED_TYPE, "completed", part=1, parts=1), {**header, "items": items}),
        job.structured,
    )
    if single.size <= settings.max_event_bytes:
        return Plan(single)
    if not settings.sink:
        raise EventFailure(
            422, "too_large",
            f"the reply for {len(items)} items needs {single.size} bytes, more than max_event_bytes "
            f"({settings.max_event_bytes}), and no K_SINK is set to send it in parts: bind a SinkBinding "
            "or raise KEMBED_MAX_EVENT_BYTES",
        )
    groups = pack(items, header, job, settings)
    parts = [
        encode(CloudEvent(part_attributes(job, settings, number, len(groups)), {**header, "items": group}), False)
        for number, group in enumerate(groups, start=1)
    ]
    summary = CloudEvent(
        attributes(job, settings, SUMMARY_TYPE, "summary", parts=len(parts)),
        {**header, "count": len(items), "parts": len(parts)},
    )
    return Plan(encode(summary, job.structured), parts)


def part_attributes(job: EmbedJob, settings: Settings, number: int, total: int) -> dict[str, Any]:
    """Sink-bound parts carry the SinkBinding's K_CE_OVERRIDES extensions too."""
    return {**settings.ce_overrides, **attributes(job, settings, COMPLETED_TYPE, f"part-{number}", part=number,
                                                  parts=total)}


def pack(items: list[dict[str, Any]], header: dict[str, Any], job: EmbedJob, settings: Settings) -> list[list[Any]]:
    """Greedy packing in input order. Parts are binary mode, whose body is the compact orjson
    encoding, so a part's size is the empty part's size plus each item's bytes and a comma."""
    widest = len(items)
    empty = encode(CloudEvent(part_attributes(job, settings, widest, widest), {**header, "items": []}), False)
    budget = settings.max_event_bytes - empty.size
    groups: list[list[Any]] = [[]]
    used = 0
    for index, item in enumerate(items):
        cost = len(orjson.dumps(item)) + 1
        if cost > budget:
            raise EventFailure(
                422, "too_large",
                f"data.items[{index}] alone needs {cost} bytes in a completed event, more than max_event_bytes "
                f"({settings.max_event_bytes}) leaves: raise KEMBED_MAX_EVENT_BYTES or shorten the id",
            )
        if used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += cost
    return groups

"""Reading a `dev.kembed.embeddings.requested` CloudEvent (binary or structured mode) into a job.

Everything the sender can get wrong ends here as a 400 that names the attribute or field, so no
malformed event reaches the InferenceService or is retried by Knative.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from eventing.errors import EventFailure, malformed
from kembed.contract import DIMENSIONS, NORMALIZE, PROMPT, PROMPT_NAME, EmbedOptions

ITEMS = "items"
TEXTS = "texts"
DATA_FIELDS = (ITEMS, TEXTS, NORMALIZE, DIMENSIONS, PROMPT_NAME, PROMPT)
ITEM_FIELDS = ("id", "text")
DATA_SHAPE = (
    '{"items": [{"id": "...", "text": "..."}], "normalize": true, "dimensions": null, "prompt_name": null, '
    '"prompt": null} or {"texts": [...]}'
)

ItemId = str | int
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Unicode categories a tokenizer drops: control (Cc), format such as U+200B ZERO WIDTH SPACE (Cf),
# and combining marks with nothing to combine with (Mn).
INVISIBLE = frozenset({"Cc", "Cf", "Mn"})


@dataclass(frozen=True)
class EmbedJob:
    """One request event: what to embed, how, and what the reply must refer to."""

    event: CloudEvent
    ids: list[ItemId]
    texts: list[str]
    options: EmbedOptions
    structured: bool

    @property
    def key(self) -> tuple[str, str]:
        """CloudEvents identity: (source, id) is unique per distinct event, equal on redelivery."""
        return self.event["source"], self.event["id"]


def is_structured(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").lower().startswith("application/cloudevents")


def parse_job(headers: Mapping[str, str], body: bytes, request_type: str, max_items: int) -> EmbedJob:
    """A validated job, or `EventFailure` (400) naming what is wrong."""
    lowered = {key.lower(): _header_value(key.lower(), value) for key, value in headers.items()}
    content_type = lowered.get("content-type", "").lower()
    if content_type.startswith("application/cloudevents-batch"):
        raise malformed("batched CloudEvents are not accepted: send one event per request")
    if not is_structured(lowered) and "ce-specversion" not in lowered:
        raise malformed(
            "not a CloudEvent: expected binary mode (ce-specversion, ce-type, ce-source, ce-id headers) "
            "or structured mode (content-type: application/cloudevents+json)"
        )
    try:
        event = from_http(lowered, body)
    except (GenericException, ValueError, TypeError) as exc:
        raise malformed(f"not a valid CloudEvent: {exc}") from exc
    except AttributeError as exc:  # the SDK reads a structured body's JSON as an object without checking
        raise malformed("not a valid CloudEvent: a structured-mode body must be a JSON object") from exc
    if event["type"] != request_type:
        raise EventFailure(
            400, "wrong_type", f"event type '{event['type']}' is not handled here: expected '{request_type}'"
        )
    for name in ("id", "source", "subject"):  # copied into the replies' headers and JSON
        if isinstance(event.get(name), str):
            _check_unicode(name, event[name])
    ids, texts, options = parse_data(event.get_data(), max_items)
    return EmbedJob(event, ids, texts, options, structured=is_structured(lowered))


def _header_value(name: str, value: str) -> str:
    """A ce-* header as text: servers decode header bytes as latin-1, senders (Knative's Go SDK) write
    attributes as UTF-8 bytes; the replies write them back the same way (`eventing.reply.encode`)."""
    if not name.startswith("ce-") or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise malformed(f"header {name} is not UTF-8 text") from None


def parse_data(data: Any, max_items: int) -> tuple[list[ItemId], list[str], EmbedOptions]:
    if data is None:
        raise malformed(f"event has no data: expected {DATA_SHAPE}")
    if not isinstance(data, dict):
        raise malformed(
            f"event data must be a JSON object (datacontenttype application/json), got {type(data).__name__}: "
            f"expected {DATA_SHAPE}"
        )
    unknown = sorted(set(data) - set(DATA_FIELDS))
    if unknown:
        raise malformed(f"unknown field(s) {unknown} in data: expected {list(DATA_FIELDS)}")
    if (ITEMS in data) == (TEXTS in data):
        raise malformed(f"data must have exactly one of '{ITEMS}' or '{TEXTS}'")
    field = ITEMS if ITEMS in data else TEXTS
    entries = data[field]
    if not isinstance(entries, list) or not entries:
        raise malformed(f"data.{field} must be a non-empty list")
    if len(entries) > max_items:
        raise malformed(f"data.{field} has {len(entries)} items: at most {max_items} are accepted per event")
    if field == ITEMS:
        ids, texts = _items(entries)
    else:
        ids, texts = list(range(len(entries))), [_text(f"data.texts[{i}]", text) for i, text in enumerate(entries)]
    return ids, texts, _options(data)


def _items(entries: list[Any]) -> tuple[list[ItemId], list[str]]:
    ids: list[ItemId] = []
    texts: list[str] = []
    seen: set[ItemId] = set()
    for index, item in enumerate(entries):
        where = f"data.items[{index}]"
        if not isinstance(item, dict):
            raise malformed(f"{where} must be an object {{\"id\": ..., \"text\": ...}}")
        unknown = sorted(set(item) - set(ITEM_FIELDS))
        if unknown:
            raise malformed(f"unknown field(s) {unknown} in {where}: expected {list(ITEM_FIELDS)}")
        item_id = item.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, str | int) or item_id == "":
            raise malformed(f"{where}.id must be a non-empty string or an integer, got {item_id!r}")
        if isinstance(item_id, int) and not INT64_MIN <= item_id <= INT64_MAX:
            raise malformed(f"{where}.id {item_id} does not fit in 64 bits: send ids this large as strings")
        if isinstance(item_id, str):
            _check_unicode(f"{where}.id", item_id)
        if item_id in seen:
            raise malformed(f"{where}.id {item_id!r} is a duplicate: ids must be unique within an event")
        seen.add(item_id)
        ids.append(item_id)
        texts.append(_text(f"{where}.text", item.get("text")))
    return ids, texts


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise malformed(f"{where} must be a string, got {type(value).__name__}")
    if _blank(value):
        raise malformed(f"{where} is empty (nothing but whitespace, zero-width or control characters)")
    _check_unicode(where, value)
    return value


def _blank(text: str) -> bool:
    """Nothing a tokenizer keeps: it would embed as [CLS][SEP] alone. Stops at the first visible character."""
    return all(char.isspace() or unicodedata.category(char) in INVISIBLE for char in text)


def _check_unicode(where: str, text: str) -> None:
    """A lone surrogate (JSON allows "\\ud800") cannot be encoded as UTF-8 for the V2 call or the reply."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise malformed(
            f"{where} contains a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}: "
            "not valid Unicode text"
        ) from None


def _options(data: dict[str, Any]) -> EmbedOptions:
    normalize = data.get(NORMALIZE)
    dimensions = data.get(DIMENSIONS)
    if normalize is not None and not isinstance(normalize, bool):
        raise malformed(f"data.{NORMALIZE} must be true, false or null, got {normalize!r}")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise malformed(f"data.{DIMENSIONS} must be a positive integer or null, got {dimensions!r}")
    prompts = {name: data.get(name) for name in (PROMPT_NAME, PROMPT)}
    for name, value in prompts.items():
        if value is not None and not isinstance(value, str):
            raise malformed(f"data.{name} must be a string or null, got {value!r}")
    return EmbedOptions(normalize=normalize, dimensions=dimensions, **prompts)

"""kserve routes that these V2-only, unversioned servers cannot serve answer the client's mistake
with a 4xx before kserve sees them: kserve answers 501 for any model version, 500 or 501 for V1
`:predict`/`:explain` bodies it cannot read (multipart, no explainer), and parses any content type
as JSON."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import orjson

from kembed.errors import error_document

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

V1_CALL = re.compile(r"^/v1/models/[^/]+:(predict|explain)/?$")
INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer/?$")
# JSON (with any parameters), or raw bytes for the V2 binary tensor extension; none = JSON.
ACCEPTED_TYPES = ("application/json", "application/octet-stream", "")


class StrictRoutes:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = refuse(scope)
            if refusal is not None:
                status, message = refusal
                await answer(send, status, error_document(scope["path"], status, message))
                return
        await self.app(scope, receive, send)


def refuse(scope: Scope) -> tuple[int, str] | None:
    path: str = scope["path"]
    if scope["method"] == "POST" and V1_CALL.match(path):
        return 400, "kembed speaks the V2 protocol only: POST /v2/models/{name}/infer"
    if path.startswith("/v2/models/"):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "/versions/" in path or "model_version" in query:
            return 404, "model versions are not served: kembed serves one unversioned model at /v2/models/{name}"
        if scope["method"] == "POST" and INFER.match(path):
            content_type = _content_type(scope)
            if content_type not in ACCEPTED_TYPES and not content_type.endswith("+json"):
                return 415, f"content type {content_type!r} is not accepted: send application/json (or " \
                    "application/octet-stream with the V2 binary extension)"
    return None


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


async def answer(send: Send, status: int, document: dict) -> None:
    body = orjson.dumps(document)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""What only the REST transport can do: refuse oversized bodies before they are read, answer V2
without FastAPI's generic (slow) response path or its routing, and write kembed's errors in kserve's
shape.

Admission, accounting and decoding are the DataPlane's (`kembed.edge`), shared with gRPC.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest, InferResponse, to_http_parameters

from kembed import contract
from kembed.disconnect import CLIENT_CLOSED, ClientGone, unless_disconnected
from kembed.errors import ServingError, error_document
from kembed.metrics import REST, record
from kembed.strict_routes import StrictRoutes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("kembed")
V2_INFER_PATH = "/v2/models/{model_name}/infer"  # versioned paths are refused by StrictRoutes: no versions
V2_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")  # what Starlette matches V2_INFER_PATH with


class BodyLimitMiddleware:
    """Refuses bodies over `max_body_bytes` with 413 before they are parsed: by the declared
    Content-Length, or while a chunked body streams. Pure ASGI, so it costs microseconds."""

    def __init__(self, app: ASGIApp, model_name: str, max_body_bytes: int):
        self.app = app
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = False
        received = 0

        async def send_unless_refused(message: Message) -> None:
            if not refused:  # after our 413, the app's own answer is dropped
                await send(message)

        async def refuse() -> Message:
            nonlocal refused
            await self._too_large(send, scope["path"])
            refused = True
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes and not refused:
                return await refuse()
            return message

        if _declared_length(scope) > self.max_body_bytes:
            await refuse()
            return
        try:
            await self.app(scope, limited_receive, send_unless_refused)
        except Exception:
            if not refused:
                raise

    async def _too_large(self, send: Send, path: str) -> None:
        record(self.model_name, REST, 413)
        message = f"request body is larger than the limit of {self.max_body_bytes} bytes"
        logger.info("413: %s", message)
        response = JSONResponse(
            status_code=413,
            content=error_document(path, 413, message, "request_too_large"),
            headers={"Connection": "close"},
        )
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def serving_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The error's status and Retry-After, in kserve's shape (`{"error": message}`; OpenAI's on the
    OpenAI routes), and one log line."""
    assert isinstance(exc, ServingError)
    (logger.error if exc.status >= 500 else logger.info)("%d: %s", exc.status, exc.message)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    content = error_document(request.url.path, exc.status, exc.message, exc.code)
    return JSONResponse(status_code=exc.status, content=content, headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's default 422 echoes the offending input, and fails (500) when that input holds a
    NaN or Infinity; this names each problem by its location instead, with the 400 that every other
    malformed request gets."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    message = f"invalid request: {contract.describe_errors(errors) if errors else exc}"
    logger.info("400: %s", message)
    return JSONResponse(status_code=400, content=error_document(request.url.path, 400, message))


class V2MetadataRoute:
    """`GET /v2/models/{name}` with the `parameters` that kserve's response model would drop."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def __call__(self, model_name: str) -> Response:
        return json_response(await self.dataplane.model_metadata(model_name), {})


class V2InferRoute:
    """`POST /v2/models/{name}/infer` on kserve's own codecs, without FastAPI's generic response
    path: kserve's endpoint returns a pydantic model that FastAPI walks with jsonable_encoder and
    fills float by float, which costs more CPU than the model on small requests (and answers binary
    outputs without a content type). The body goes to the DataPlane as bytes (pydantic parses JSON
    straight from them); JSON responses are written by orjson from the numpy arrays."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def __call__(self, request: Request, model_name: str) -> Response:
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        body = await request.body()
        headers = dict(request.headers)
        infer_request, _ = self.dataplane.decode(
            body, headers, protocol_version=PredictorProtocol.REST_V2.value, model_name=model_name
        )
        try:
            response, response_headers = await unless_disconnected(
                self.dataplane.infer(model_name, infer_request, headers), request
            )
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if not isinstance(response, InferResponse):
            return json_response(response, response_headers)
        return self.encode(infer_request, response, response_headers)

    @staticmethod
    def encode(request: InferRequest, response: InferResponse, headers: dict[str, str]) -> Response:
        """Binary when the request asked for binary outputs (all, or one of them), else JSON."""
        wants_binary = request.use_binary_outputs or any(
            output.binary_data for output in request.request_outputs or ()
        )
        if wants_binary:
            body, json_length = response.to_rest()
            if json_length is not None:
                headers = {**headers, INFERENCE_CONTENT_LENGTH_HEADER: str(json_length)}
                return Response(body, headers=headers, media_type="application/octet-stream")
            return json_response(body, headers)
        outputs = [
            {
                "name": output.name,
                "shape": list(output.shape),
                "datatype": output.datatype,
                "parameters": None,
                "data": output.as_numpy().reshape(-1),
            }
            for output in response.outputs
        ]
        document = {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "id": response.id,
            "parameters": to_http_parameters(response.parameters) if response.parameters else None,
            "outputs": outputs,
        }
        return json_response(document, headers)


class V2InferFastPath:
    """`POST /v2/models/{name}/infer` straight to `V2InferRoute`, in front of Starlette: at one text
    per request, FastAPI's middleware layers, its router (a regex per kserve route) and its
    dependency solving were a tenth to a fifth of the event loop's CPU. Everything else goes to the app.
    An error is answered by the app's own handler for it (kserve's and kembed's), as Starlette's
    ExceptionMiddleware would; one with only the catch-all `Exception` handler is answered by it
    and raised on, as Starlette's ServerErrorMiddleware does, so the server logs it."""

    def __init__(self, app: FastAPI, route: V2InferRoute):
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = V2_INFER.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.route(request, match.group(1))
        except Exception as exc:
            handled, handler = self._handler(exc)
            await (await handler(request, exc))(scope, receive, send)
            if handled is Exception:
                raise
            return
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> tuple[type, Callable[..., Awaitable[Response]]]:
        """The app's handler for `exc`: the nearest class in its MRO that has one (kserve registers
        one for Exception, so there always is one)."""
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return cls, handlers[cls]
        raise exc


def json_response(document: Any, headers: dict[str, str]) -> Response:
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), headers=headers, media_type="application/json"
    )


def without_request_timing(app: FastAPI) -> None:
    """Leaves out kserve's per-request TimingMiddleware (timing_asgi): its two getrusage() calls sum
    the times of every thread in the process, a third of the event loop's work at one text per
    request, for figures that go to the `kserve.trace` logger, silent unless `--access_log` is on.
    Starlette builds the middleware stack at the first request, after kserve added its own."""
    from timing_asgi import TimingMiddleware

    build = app.build_middleware_stack

    def build_without_timing() -> ASGIApp:
        app.user_middleware = [entry for entry in app.user_middleware if entry.cls is not TimingMiddleware]
        return build()

    app.build_middleware_stack = build_without_timing  # type: ignore[method-assign]


def install(app: FastAPI, dataplane: DataPlane) -> None:
    """kembed's error handlers and the V2 infer and metadata routes, on kserve's app before it starts.

    kserve registers its own routes when ModelServer.start builds the app, after these; Starlette
    answers with the first route that matches, so kembed's routes are the ones that run (a test
    checks that they are)."""
    app.add_exception_handler(ServingError, serving_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_api_route(V2_INFER_PATH, V2InferRoute(dataplane), methods=["POST"], include_in_schema=False)
    app.add_api_route("/v2/models/{model_name}", V2MetadataRoute(dataplane), methods=["GET"], include_in_schema=False)


def edge_app(
    app: FastAPI, model_name: str, max_body_bytes: int, dataplane: DataPlane, fast_infer: bool = True
) -> ASGIApp:
    """What the HTTP server runs: the body limit and StrictRoutes around kserve's app, with V2 infer
    answered in front of it (`V2InferFastPath`) unless `fast_infer` is off (then it goes through the
    app's middleware, kserve's request timing included, to the same `V2InferRoute`)."""
    inner: ASGIApp = V2InferFastPath(app, V2InferRoute(dataplane)) if fast_infer else app
    return BodyLimitMiddleware(StrictRoutes(inner), model_name=model_name, max_body_bytes=max_body_bytes)

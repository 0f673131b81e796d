"""How a kembed server plugs into kserve's ModelServer: request metrics by status, 429s that say
when to retry, and request decoding whose failures are the client's (400), not the server's (500).

The metrics middleware is pure ASGI (no per-request Starlette objects) so it costs microseconds;
it sees every status, including the 4xx/5xx that kserve produces before a model is reached.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve import Model, ModelServer, model_server
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.errors import InvalidInput, ModelNotReady
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse, to_http_parameters

from kembed import contract, metrics
from kembed.disconnect import CLIENT_CLOSED, ClientGone, unless_disconnected
from kembed.errors import QueueFull, Unavailable, error_document
from kembed.health import ServingHealth
from kembed.repository import ClosedRepository, RepositoryDisabled, repository_disabled_handler
from kembed.shutdown import drain_on_sigterm
from kembed.strict_routes import StrictRoutes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COUNTED_SUFFIXES = ("/infer", "/embeddings")


Admission = Callable[[], "int | None"]


class RequestsInFlight:
    """Embedding requests inside the app right now (counted by EdgeMiddleware). The batcher compares
    it with the requests it holds: when they are equal, no request is being read or tokenized, so
    nothing can join a batch and waiting out the latency window would only add latency."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


class EdgeMiddleware:
    """Refuses bodies over `max_body_bytes` with 413 before they are parsed (by the declared
    Content-Length, or while streaming a chunked body), sheds embedding requests with 429 before
    they are parsed when `admission` says the server is full (under a 429 storm, parsing and
    tokenizing requests only to refuse them would eat the CPU the model needs), and counts
    embedding requests by status."""

    def __init__(
        self,
        app: ASGIApp,
        model_name: str,
        max_body_bytes: int,
        admission: Admission | None = None,
        in_flight: RequestsInFlight | None = None,
    ):
        self.app = app
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        self.admission = admission
        self.in_flight = in_flight if in_flight is not None else RequestsInFlight()
        self.duration = metrics.REQUEST_DURATION.labels(model=model_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = scope["path"].endswith(COUNTED_SUFFIXES)
        started = time.perf_counter()
        status = 500
        refused = False
        received = 0

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if refused:  # we already answered 413; the app's own answer is dropped
                return
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def refuse() -> Message:
            nonlocal refused
            await self._too_large(send_and_record, scope["path"])
            refused = True
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes and not refused:
                return await refuse()
            return message

        retry_after = self.admission() if counted and self.admission is not None else None
        try:
            if retry_after is not None:
                await self._shed(send_and_record, retry_after, scope["path"])
            elif _declared_length(scope) > self.max_body_bytes:
                await refuse()
            elif counted:
                self.in_flight.count += 1
                try:
                    await self.app(scope, limited_receive, send_and_record)
                finally:
                    self.in_flight.count -= 1
            else:
                await self.app(scope, limited_receive, send_and_record)
        except Exception:
            if not refused:
                raise
        finally:
            if counted:
                metrics.REQUESTS.labels(model=self.model_name, status=str(status)).inc()
                self.duration.observe(time.perf_counter() - started)

    async def _shed(self, send: Send, retry_after: int, path: str) -> None:
        message = f"the embedding queue is full; retry after {retry_after} s"
        response = JSONResponse(
            status_code=429,
            content=error_document(path, 429, message, "queue_full"),
            headers={"Retry-After": str(retry_after)},
        )
        await response({"type": "http"}, _no_body, send)

    async def _too_large(self, send: Send, path: str) -> None:
        message = f"request body is larger than the limit of {self.max_body_bytes} bytes"
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


async def queue_full_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return JSONResponse(
        status_code=429, content=error_document(request.url.path, 429, str(exc), "queue_full"),
        headers={"Retry-After": str(exc.retry_after_s)},
    )


async def unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unavailable)
    return JSONResponse(
        status_code=503,
        content=error_document(request.url.path, 503, exc.message),
        headers={"Retry-After": str(exc.retry_after_s)},
    )


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's default 422 echoes the offending input, and fails (500) when that input holds a
    NaN or Infinity; this names each problem by its location instead, with the 400 that every other
    malformed request gets."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    message = f"invalid request: {contract.describe_errors(errors) if errors else exc}"
    return JSONResponse(status_code=400, content=error_document(request.url.path, 400, message))


def install(
    app: FastAPI,
    model_name: str,
    max_body_bytes: int,
    admission: Admission | None = None,
    in_flight: RequestsInFlight | None = None,
) -> None:
    """Adds kembed's middleware and overload handlers to kserve's FastAPI app (before start)."""
    app.add_middleware(StrictRoutes)
    app.add_middleware(
        EdgeMiddleware, model_name=model_name, max_body_bytes=max_body_bytes, admission=admission, in_flight=in_flight
    )
    app.add_exception_handler(QueueFull, queue_full_handler)
    app.add_exception_handler(Unavailable, unavailable_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)


class ClientDecodingDataPlane(ServingHealth):
    """kserve's decoder lets malformed bodies escape as ValueError, KeyError, struct.error or
    InferenceError (a 500). Decoding only reads what the client sent, so any failure there is a 400."""

    def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:
            raise InvalidInput(f"malformed V2 request: {exc}") from exc

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        """kserve's metadata, plus the model's `metadata_parameters()` (its prompt names, say) as
        `parameters`: kserve's own REST and gRPC metadata carry only the tensors."""
        metadata = await super().model_metadata(model_name)
        extra = getattr(self.get_model_from_registry(model_name), "metadata_parameters", None)
        if callable(extra):
            metadata["parameters"] = extra()
        return metadata


class V2MetadataRoute:
    """`GET /v2/models/{name}` with the `parameters` that kserve's response model would drop."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def __call__(self, model_name: str) -> Response:
        return json_response(await self.dataplane.model_metadata(model_name), {})


class V2InferRoute:
    """`POST /v2/models/{name}/infer` on kserve's own codecs, without FastAPI's generic response
    path: kserve's endpoint returns a pydantic model that FastAPI walks with jsonable_encoder and
    fills float by float, which costs more CPU than the model on small requests. Requests are
    parsed by pydantic straight from JSON bytes (or the V2 binary extension), decoded and run by
    kserve's DataPlane; JSON responses are written by orjson from the numpy arrays."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def __call__(self, request: Request, model_name: str) -> Response:
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        body = await request.body()
        headers = dict(request.headers)
        payload: Any = body if INFERENCE_CONTENT_LENGTH_HEADER in headers else contract.parse_rest_request(body)
        infer_request, _ = self.dataplane.decode(
            payload, headers, protocol_version=PredictorProtocol.REST_V2.value, model_name=model_name
        )
        try:
            response, response_headers = await unless_disconnected(
                self.dataplane.infer(model_name, infer_request, headers), request
            )
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if not isinstance(response, InferResponse):
            return json_response(response, response_headers)
        return self.encode(response, response_headers)

    @staticmethod
    def encode(response: InferResponse, headers: dict[str, str]) -> Response:
        wants_binary = response._use_binary_outputs or any(
            output.binary_data for output in response._requested_outputs or ()
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


def json_response(document: Any, headers: dict[str, str]) -> Response:
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), headers=headers, media_type="application/json"
    )


def serve(
    model: Model,
    args: argparse.Namespace,
    predictor_config: PredictorConfig | None = None,
    admission: Admission | None = None,
    in_flight: RequestsInFlight | None = None,
) -> None:
    """Starts kserve's ModelServer for one loaded model, with kembed's edges installed.

    On SIGTERM uvicorn stops accepting connections and waits up to `--grace_period_seconds` for
    every request in flight, so everything already in the batcher's queue is answered before exit.
    """
    install(model_server.app, model.name, args.max_body_bytes, admission, in_flight)
    if callable(drain := getattr(model, "drain", None)):
        drain_on_sigterm(model_server.app, drain, args.grace_period_seconds)
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        grace_period=args.grace_period_seconds,
        enable_latency_logging=args.enable_latency_logging or args.latency_logging,
        predictor_config=predictor_config,
    )
    server.dataplane = ClientDecodingDataPlane(server.registered_models)
    if not args.enable_model_repository:
        server.model_repository_extension = ClosedRepository()  # type: ignore[assignment]
        model_server.app.add_exception_handler(RepositoryDisabled, repository_disabled_handler)
    route = V2InferRoute(server.dataplane)
    # (versioned paths are refused by StrictRoutes: kembed models have no versions)
    model_server.app.add_api_route("/v2/models/{model_name}/infer", route, methods=["POST"], include_in_schema=False)
    model_server.app.add_api_route(
        "/v2/models/{model_name}", V2MetadataRoute(server.dataplane), methods=["GET"], include_in_schema=False
    )
    # The entry points pause the GC while importing and loading (see predictor/__main__.py). What
    # exists now lives as long as the process: freeze it, so collections while serving skip it.
    gc.freeze()
    gc.enable()
    server.start([model])

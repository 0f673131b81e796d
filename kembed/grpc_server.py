"""kembed's gRPC server: kserve's own V2 servicer, with an interceptor that can say when to retry.

kserve's gRPC server hard-codes its interceptors, and its interceptor answers every exception it does
not know with `INTERNAL`; a gRPC exception it does know gets a code but no metadata. Overload must be
`RESOURCE_EXHAUSTED` with the delay a client should wait, as REST's 429 carries `Retry-After`, so
kembed builds the server from kserve's public parts (`InferenceServicer`, the generated
`add_GRPCInferenceServiceServicer_to_server`, `ExceptionToStatusInterceptor`) and adds the delay as
`retry-after` trailing metadata. grpc parses a request before any interceptor sees it, and answers a
body that is not the method's message UNKNOWN with a traceback; `ParseRequestInterceptor` parses it
instead, so it is INVALID_ARGUMENT naming the message type, as REST answers a malformed body 400.
Everything else about a request (admission, metrics, decoding) is the DataPlane's, shared with REST.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from kembed.errors import RETRY_AFTER_METADATA, ServingError
from kembed.metrics import GRPC, record

logger = logging.getLogger("kembed")


class RetryAwareStatusInterceptor(ExceptionToStatusInterceptor):
    """A `ServingError` becomes its gRPC code with `retry-after` (seconds) in the trailing metadata and
    one log line; every other exception is kserve's to map."""

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str) -> None:
        if isinstance(ex, ServingError):
            log = logger.error if ex.status >= 500 else logger.info
            log("gRPC %s %s (%d): %s", method_name, ex.grpc_code.name, ex.status, ex.message)
            metadata = ((RETRY_AFTER_METADATA, str(ex.retry_after)),) if ex.retry_after is not None else ()
            await context.abort(ex.grpc_code, ex.message, trailing_metadata=metadata)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


COUNTED_METHODS = ("/ModelInfer",)  # the edge counts inference requests only, over REST too


class ParseRequestInterceptor(aio.ServerInterceptor):
    """Each unary method receives its raw bytes and parses them with the method's own deserializer; a
    body that does not parse is a `ServingError(400)`, which the interceptor outside this one answers
    INVALID_ARGUMENT with one log line. A refused ModelInfer is counted as a gRPC 400 (model
    "unknown": its name is inside the bytes that did not parse)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behavior = handler.request_deserializer, handler.unary_unary
        message_type = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        name = message_type.full_name if message_type is not None else "request message"
        counted = handler_call_details.method.endswith(COUNTED_METHODS)

        async def parse_then_serve(raw: bytes, context: aio.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except Exception as exc:
                if counted:
                    record("unknown", GRPC, 400)
                raise ServingError(400, f"request body is not a valid {name} ({len(raw)} bytes): {exc}") from None
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            parse_then_serve, request_deserializer=None, response_serializer=handler.response_serializer
        )


class GRPCServer:
    """One `grpc.aio` server on `port` serving kserve's V2 servicer over `dataplane`."""

    def __init__(
        self,
        port: int,
        dataplane: DataPlane,
        model_repository_extension: ModelRepositoryExtension,
        grace_period: float,
        options: list[tuple[str, Any]] | None = None,
    ):
        self.port = port
        self.dataplane = dataplane
        self.model_repository_extension = model_repository_extension
        self.grace_period = grace_period
        self.options = options or []
        self._server: aio.Server | None = None

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(RetryAwareStatusInterceptor(), ParseRequestInterceptor()),
            options=self.options,
        )
        servicer = InferenceServicer(self.dataplane, self.model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self.port}")
        logger.info("gRPC server on port %d", self.port)
        await self._server.start()
        await self._server.wait_for_termination()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=self.grace_period)

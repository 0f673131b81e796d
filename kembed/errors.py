"""Errors that mean something to a client of any kembed server, whatever the protocol.

A `ServingError` carries the answer itself: the HTTP status, the gRPC code that corresponds to it,
and how long to wait before retrying. The edge answers it the same way over REST (status and
`Retry-After`) and gRPC (code and `retry-after` trailing metadata), and counts it by that status.
"""

from __future__ import annotations

import grpc
from fastapi.exceptions import RequestValidationError
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
RETRY_AFTER_METADATA = "retry-after"  # gRPC trailing metadata key, seconds (as HTTP's Retry-After)


class ServingError(Exception):
    """A request kembed answers with `status` (REST) or `grpc_code` (gRPC), and `retry_after` seconds
    when a retry can succeed. ``code`` names the error on the OpenAI routes."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.code = code

    @property
    def grpc_code(self) -> grpc.StatusCode:
        default = grpc.StatusCode.INVALID_ARGUMENT if self.status < 500 else grpc.StatusCode.INTERNAL
        return HTTP_TO_GRPC.get(self.status, default)

    def __str__(self) -> str:
        return self.message


class QueueFull(ServingError):
    """The queue cannot take a request's items; the client should retry after a pause."""

    def __init__(self, waiting: int, capacity: float, retry_after_s: int, expected_wait_s: float | None = None):
        if expected_wait_s is None:
            reason = f"{waiting} of {capacity} items waiting"
        else:
            reason = f"expected wait {expected_wait_s:.1f} s is over the {capacity:g} s bound"
        super().__init__(429, f"the embedding queue is full ({reason}); retry after {retry_after_s} s",
                         retry_after_s, "queue_full")


# OpenAI-compatible routes (the transformer's /v1/embeddings and /v1/models, also under kserve's
# /openai prefix) answer errors in OpenAI's shape, which OpenAI's SDKs read; every other route
# answers V2's {"error": message}.
OPENAI_PREFIXES = ("/v1/embeddings", "/v1/models", "/openai/v1/")


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES) and not path.endswith((":predict", ":explain"))


def openai_error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_document(path: str, status: int, message: str, code: str | None = None) -> dict:
    """The body of an error answer on `path`: OpenAI's shape on the OpenAI routes, else V2's."""
    if is_openai_path(path):
        return {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": code}}
    return {"error": message}


class Unavailable(ServingError):
    """Work this server will not do: it is shutting down and the work cannot finish within the
    grace period, or it waited longer than its client does. 503 with Retry-After over REST,
    UNAVAILABLE with `retry-after` over gRPC."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(503, message, retry_after_s, "unavailable")


def status_of(exc: BaseException | None) -> int:
    """The HTTP status a request that ended with ``exc`` is answered with (gRPC: the one it stands for)."""
    if exc is None:
        return 200
    if isinstance(exc, ServingError):
        return exc.status
    if isinstance(exc, InvalidInput | RequestValidationError):
        return 400
    if isinstance(exc, ModelNotFound):
        return 404
    if isinstance(exc, ModelNotReady):
        return 503
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):  # what kserve's gRPC client logs
        return GRPC_TO_HTTP.get(exc.code(), 500)
    return 500

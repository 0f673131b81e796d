"""Errors that mean something to a client of any kembed server, whatever the protocol."""

from __future__ import annotations

import grpc
from grpc_interceptor.exceptions import GrpcException


class QueueFull(Exception):
    """The queue cannot take a request's items; the client should retry after a pause."""

    def __init__(self, waiting: int, capacity: float, retry_after_s: int, expected_wait_s: float | None = None):
        if expected_wait_s is None:
            reason = f"{waiting} of {capacity} items waiting"
        else:
            reason = f"expected wait {expected_wait_s:.1f} s is over the {capacity:g} s bound"
        super().__init__(f"embedding queue is full ({reason}); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


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


class Unavailable(GrpcException):
    """Work this server will not do: it is shutting down and the work cannot finish within the
    grace period, or it waited longer than its client does. 503 with Retry-After over REST,
    UNAVAILABLE over gRPC (kserve's interceptor maps a GrpcException by its status code)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(details=message, status_code=grpc.StatusCode.UNAVAILABLE)
        self.message = message
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message

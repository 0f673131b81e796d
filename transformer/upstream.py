"""What a failed predictor hop means to the transformer's client.

kserve's clients raise `httpx` and `grpc` errors that kserve itself would answer with a 500. The
client's request was fine in those cases (or the predictor already said what was wrong with it),
so each becomes a `PredictorError` with the status the client should see: 503 when the predictor
cannot be reached or is not ready, 504 when it is too slow, its own 4xx (and Retry-After) when it
refused the request, 502 for anything else it failed at.
"""

from __future__ import annotations

import grpc
import httpx
from fastapi import Request
from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import GrpcException

_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class PredictorError(GrpcException):
    """A predictor failure with the HTTP status (REST) and gRPC status (gRPC) to answer with.
    Being a `GrpcException`, kserve's gRPC interceptor already maps it to ``status_code``."""

    def __init__(self, status: int, message: str, retry_after: str | None = None):
        default = grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL
        super().__init__(details=message, status_code=_HTTP_TO_GRPC.get(status, default))
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


def _http_error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return response.text.strip()


def from_http(exc: httpx.HTTPError, host: str) -> PredictorError:
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        message = _http_error_message(response)
        status = response.status_code
        if status < 500:
            return PredictorError(status, message, response.headers.get("retry-after"))
        if status == 503:
            return PredictorError(503, f"predictor {host} is not ready: {message}", response.headers.get("retry-after"))
        return PredictorError(502, f"predictor {host} failed with {status}: {message}")
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return PredictorError(503, f"predictor {host} is unreachable: {exc or type(exc).__name__}", "1")
    if isinstance(exc, httpx.TimeoutException):
        return PredictorError(504, f"predictor {host} did not answer in time ({type(exc).__name__})")
    return PredictorError(503, f"predictor {host} is unreachable: {type(exc).__name__}: {exc}", "1")


def from_grpc(exc: grpc.RpcError, host: str) -> PredictorError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(code)
    status = _GRPC_TO_HTTP.get(code, 502)
    if status == 503:
        return PredictorError(503, f"predictor {host} is unreachable or not ready: {details}", "1")
    if status == 504:
        return PredictorError(504, f"predictor {host} did not answer in time: {details}")
    if status == 502:
        return PredictorError(502, f"predictor {host} failed with {code.name}: {details}")
    return PredictorError(status, details, "1" if status == 429 else None)


async def predictor_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """kserve's error shape (`{"error": message}`) with the predictor's status."""
    assert isinstance(exc, PredictorError)
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
    return JSONResponse(status_code=exc.status, content={"error": exc.message}, headers=headers)

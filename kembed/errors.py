"""Errors that mean something to a client of any kembed server, whatever the protocol."""

from __future__ import annotations


class QueueFull(Exception):
    """The queue cannot take a request's items; the client should retry after a pause."""

    def __init__(self, waiting: int, capacity: int, retry_after_s: int):
        super().__init__(
            f"embedding queue is full ({waiting} of {capacity} items waiting); "
            f"retry after {retry_after_s} s"
        )
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

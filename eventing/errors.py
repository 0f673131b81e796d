"""One exception type for every way an event can fail, carrying the HTTP answer Knative acts on.

Knative retries 404, 408, 409, 429 and 5xx (with the Trigger's backoff) and sends everything else
straight to the dead-letter sink, so the status is the retry decision: 4xx for the sender's mistakes,
429/503 with Retry-After when a retry can succeed.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class EventFailure(Exception):
    """An event that cannot be answered with a reply event. ``reason`` labels the failure metric."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse({"error": self.message, "reason": self.reason}, status_code=self.status, headers=headers)


def malformed(message: str) -> EventFailure:
    """The sender's mistake: 400, not retried."""
    return EventFailure(400, "malformed", message)


def unavailable(message: str, retry_after: int) -> EventFailure:
    """Something downstream is down: 503, retried by Knative with backoff."""
    return EventFailure(503, "unavailable", message, retry_after)

"""Header and body read timeouts, so half-sent requests do not hold connections forever.

uvicorn times out only idle keep-alive connections (and a byte of a next request cancels even
that), and kserve exposes nothing else: 500 half-sent requests once stayed open for minutes. This
is uvicorn's own httptools protocol with two timers: the request line and headers must arrive
within `header_seconds` of the connection opening (or of the request's first byte), the body within
`body_seconds` of the headers; else the client gets 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def timed_protocol(header_seconds: float, body_seconds: float) -> type[HttpToolsProtocol]:
    class ReadTimeoutProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._too_slow, what, seconds)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self, what: str, seconds: float) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            # no answer under way (the last cycle may be a previous, answered request)
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                body = orjson.dumps({"error": f"request {what} not received within {seconds:g} s"})
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_seconds, "headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._timer is None:
                self._arm(header_seconds, "headers")

        def on_headers_complete(self) -> None:
            self._arm(body_seconds, "body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return ReadTimeoutProtocol

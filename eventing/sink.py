"""POSTs events to K_SINK (a SinkBinding's target, usually the Broker)."""

from __future__ import annotations

import httpx

from eventing.errors import unavailable
from eventing.reply import Encoded


class Sink:
    def __init__(self, url: str, timeout_seconds: float, retry_after_seconds: int):
        self.url = url
        self.retry_after = retry_after_seconds
        self.client = httpx.AsyncClient(timeout=timeout_seconds, transport=httpx.AsyncHTTPTransport(retries=1))

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, event: Encoded) -> None:
        """Any failure is 503: the delivery is retried and the parts sent again with the same ids."""
        try:
            headers = {name: value.encode("latin-1") for name, value in event.headers.items()}
            response = await self.client.post(self.url, headers=headers, content=event.body)
        except httpx.HTTPError as exc:
            message = f"K_SINK {self.url} is unreachable: {exc or type(exc).__name__}"
            raise unavailable(message, self.retry_after) from exc
        if not response.is_success:
            raise unavailable(
                f"K_SINK {self.url} refused a completed part with {response.status_code}: {response.text[:200]}",
                self.retry_after,
            )

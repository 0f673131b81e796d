"""Work for a client that has gone away is cancelled, so its items leave the batcher's queue
without a forward pass (Starlette does not cancel a handler when its client disconnects)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request, Response

T = TypeVar("T")

# nginx's "client closed request": logged and counted, never seen by the client.
CLIENT_CLOSED = 499


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(work: Awaitable[T], request: Request) -> T:
    """`await work`, cancelled (ClientGone) when the client disconnects first. Call it after the
    body has been read: from then on the server's next message is the disconnect."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone()
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def client_disconnect_handler(_: Request, exc: Exception) -> Response:
    """Starlette's ClientDisconnect (the client went away mid-body, or its body timed out): not a
    server fault, and nobody reads this answer."""
    return Response(status_code=CLIENT_CLOSED)

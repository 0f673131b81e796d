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

"""ShutdownDeadline: after drain(), what runs past the deadline is a 503, never a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from kembed.errors import Unavailable
from kembed.shutdown import ShutdownDeadline


async def work(deadline: ShutdownDeadline, seconds: float) -> str:
    async with deadline.running():
        await asyncio.sleep(seconds)
    return "done"


def test_work_in_flight_past_the_deadline_is_answered_503_and_shorter_work_finishes() -> None:
    async def run() -> tuple[object, object, object]:
        deadline = ShutdownDeadline()
        long, short = asyncio.create_task(work(deadline, 30)), asyncio.create_task(work(deadline, 0.05))
        await asyncio.sleep(0.01)
        deadline.drain(0.2)
        late = asyncio.create_task(work(deadline, 30))  # arrives after SIGTERM, cannot finish in time
        return tuple(await asyncio.gather(long, short, late, return_exceptions=True))

    long, short, late = asyncio.run(asyncio.wait_for(run(), 5))
    assert short == "done"
    for answer in (long, late):
        assert isinstance(answer, Unavailable) and answer.status == 503 and answer.retry_after == 1


def test_a_request_after_the_deadline_is_refused_at_once() -> None:
    async def run() -> None:
        deadline = ShutdownDeadline()
        deadline.drain(0)
        with pytest.raises(Unavailable, match="cannot take this request"):
            await work(deadline, 0)

    asyncio.run(run())


def test_the_bodys_own_timeout_is_not_taken_for_the_deadline() -> None:
    async def run() -> None:
        deadline = ShutdownDeadline()
        with pytest.raises(TimeoutError):
            async with deadline.running():
                raise TimeoutError("the predictor hop timed out")

    asyncio.run(run())

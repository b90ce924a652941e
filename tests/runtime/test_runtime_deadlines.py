"""Deadlines: one timer per model expires requests in deadline order (FakeClock, no waiting)."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.runtime.clock import FakeClock
from shoal.runtime.deadlines import Deadlines
from shoal.runtime.errors import DeadlineExceeded


def futures(n: int = 1) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


def expired(futs: list[asyncio.Future[Any]]) -> bool:
    return all(f.done() and isinstance(f.exception(), DeadlineExceeded) for f in futs)


async def test_requests_expire_at_their_deadlines_in_any_arrival_order() -> None:
    clock = FakeClock()
    deadlines = Deadlines(clock)
    late, early = futures(2), futures()
    deadlines.add(clock.time() + 2.0, late)
    deadlines.add(clock.time() + 1.0, early)  # earlier than the armed timer: re-armed
    assert clock.pending() == 1
    clock.advance(0.999)
    assert not any(f.done() for f in late + early)
    clock.advance(0.001)
    assert expired(early)
    assert not any(f.done() for f in late)
    clock.advance(1.0)
    assert expired(late)
    assert "no answer within 2000 ms" in str(late[0].exception())


async def test_an_answered_request_never_expires_and_leaves_no_timer() -> None:
    clock = FakeClock()
    deadlines = Deadlines(clock)
    first, second = futures(), futures()
    k1 = deadlines.add(clock.time() + 1.0, first)
    k2 = deadlines.add(clock.time() + 3.0, second)
    deadlines.remove(k1)  # the head is answered: the timer stays, and finds nothing due
    clock.advance(1.0)
    assert not first[0].done()
    assert not second[0].done()
    assert clock.pending() == 1  # re-armed at the next deadline
    deadlines.remove(k2)
    assert clock.pending() == 0
    clock.advance(5.0)
    assert not second[0].done()


async def test_waiting_lists_the_unanswered_requests() -> None:
    clock = FakeClock()
    deadlines = Deadlines(clock)
    a, b = futures(), futures()
    ka = deadlines.add(clock.time() + 1.0, a)
    deadlines.add(clock.time() + 1.0, b)
    deadlines.remove(ka)
    assert list(deadlines.waiting()) == [b]


async def test_answered_requests_behind_a_slow_one_are_compacted() -> None:
    """One request waits out its budget while thousands are answered: the heap stays bounded
    and the slow one still expires on time."""
    clock = FakeClock()
    deadlines = Deadlines(clock)
    slow = futures()
    deadlines.add(clock.time() + 1.0, slow)
    for i in range(20_000):
        deadlines.remove(deadlines.add(clock.time() + 30.0 + i * 1e-4, futures()))
        assert len(deadlines) <= 2 * Deadlines.COMPACT_MIN + 2
    clock.advance(1.0)
    assert expired(slow)

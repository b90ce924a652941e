"""Finding the rows at fault when a batched call raises, so one bad row fails only its own
request. One rule for `shoal serve` and `shoal batch-predict`.

The rule: a batch of n > 1 rows whose call raised is split in two and each half is called
again (bisection), down to single rows; a single row that still raises has its own error (a
`ValueError`/`TypeError` becomes the client's 400). The extra calls are bounded: at most
`retry_budget(n)` = 4·⌈log2 n⌉ per failed batch, enough to isolate two bad rows exactly (one
costs 2·⌈log2 n⌉); a group still failing when the budget is spent fails together with the
server's 500. A model that is simply broken therefore costs about log2 n extra calls per batch,
never a call per row. Nothing of this runs while no call raises: a batch that succeeds goes
through one `try`.

It is on by default (`@shoal.batch(isolate_failures=False)` turns it off), because inference is
normally a pure function of its inputs, and calling it again on the good rows changes nothing
but latency. Turn it off for a batch function with side effects that must not repeat (it
writes somewhere, counts, or calls a non-idempotent service).

The algorithm is a generator that asks for calls (`yield (start, stop)`) and is sent each
call's results or exception; `_Drive` runs it and `run_sync`/`run_async` only make the calls,
so the thread-pool path, the event-loop path and the offline predictor share the same code.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.runtime.errors import ModelError, from_model

Plan = Generator[tuple[int, int], "list[Any] | Exception", list[Any]]


def retry_budget(n: int) -> int:
    """Most extra calls spent on one failed batch of `n` rows."""
    return 0 if n < 2 else 4 * math.ceil(math.log2(n))


@dataclass
class Isolated:
    """What a failed batch came to: per row a result or an exception (the row's own, or a
    shared `ModelError` where the budget ran out), and what it cost."""

    results: list[Any]
    calls: int
    first_error: BaseException
    """The error of the whole batch's call (logged once per model)."""
    first_row: int | None
    """The index of the first row found at fault, if any."""


def checked(results: Any, n: int, name: str) -> list[Any]:
    """A call's results as a list of exactly `n`, or a ModelError (the model's bug, not a row's:
    never bisected)."""
    try:
        count = len(results)
    except TypeError:
        raise ModelError(
            f"{name} returned {type(results).__name__}; a batched function must "
            f"return a list with one result per input"
        ) from None
    if count != n:
        raise ModelError(
            f"{name} returned {count} results for a batch of {n} inputs; "
            f"a batched function must return one result per input"
        )
    return results if type(results) is list else list(results)


def bisect(n: int, error: Exception, name: str, budget: int | None = None) -> Plan:
    """Split the failed batch [0, n) until each failing row stands alone or the budget is spent.
    Returns one entry per row: a result, or an exception."""
    budget = retry_budget(n) if budget is None else budget
    out: list[Any] = [None] * n
    failed: list[tuple[int, int, Exception]] = [(0, n, error)]
    calls = 0
    while failed:
        lo, hi, exc = failed.pop()
        if hi - lo == 1:
            out[lo] = exc
            continue
        if isinstance(exc, ModelError) or calls + 2 > budget:
            shared = from_model(name, exc, own=False)
            out[lo:hi] = [shared] * (hi - lo)
            continue
        mid = (lo + hi) // 2
        halves: list[tuple[int, int, Exception]] = []
        for a, b in ((lo, mid), (mid, hi)):
            calls += 1
            got = yield a, b
            if isinstance(got, Exception):
                halves.append((a, b, got))
            else:
                out[a:b] = got
        failed.extend(reversed(halves))  # depth first, left half first
    return out


class _Drive:
    """Runs a `bisect` plan: iterate for the next (start, stop) to call, `got()` each answer."""

    def __init__(self, values: list[Any], error: Exception, name: str) -> None:
        self.values = values
        self.error = error
        self.name = name
        self.calls = 0
        self._plan = bisect(len(values), error, name)
        self._next: tuple[int, int] | None = None
        self._results: list[Any] = []
        self._advance(None)

    def _advance(self, got: list[Any] | Exception | None) -> None:
        try:
            self._next = next(self._plan) if got is None else self._plan.send(got)
        except StopIteration as done:
            self._next = None
            self._results = done.value

    def __iter__(self) -> _Drive:
        return self

    def __next__(self) -> list[Any]:
        if self._next is None:
            raise StopIteration
        self.calls += 1
        a, b = self._next
        return self.values[a:b]

    def got(self, results: Any) -> None:
        """The answer to the last call: its results, or the exception it raised."""
        if not isinstance(results, Exception):
            assert self._next is not None
            a, b = self._next
            try:
                results = checked(results, b - a, self.name)
            except ModelError as exc:
                results = exc
        self._advance(results)

    def outcome(self) -> Isolated:
        results = self._results
        shared = {id(r) for r in results if isinstance(r, ModelError)}
        first = next(
            (
                i
                for i, r in enumerate(results)
                if isinstance(r, BaseException) and id(r) not in shared
            ),
            None,
        )
        return Isolated(results, self.calls, self.error, first)


def run_sync(
    call: Callable[[list[Any]], Any], values: list[Any], error: Exception, name: str
) -> Isolated:
    """Isolate the failing rows of `values` (whose call raised `error`) with sync calls."""
    drive = _Drive(values, error, name)
    for part in drive:
        try:
            drive.got(call(part))
        except Exception as exc:
            drive.got(exc)
    return drive.outcome()


async def run_async(
    call: Callable[[list[Any]], Awaitable[Sequence[Any]]],
    values: list[Any],
    error: Exception,
    name: str,
) -> Isolated:
    """The same with an async batch function (awaited on the loop)."""
    drive = _Drive(values, error, name)
    for part in drive:
        try:
            drive.got(await call(part))
        except Exception as exc:
            drive.got(exc)
    return drive.outcome()

"""Power of two choices on gateway-side outstanding requests (Envoy's LEAST_REQUEST with
choice_count 2): pick two distinct random candidates, send to the one with fewer requests in
flight. O(1), no global view needed, and it avoids the herd that pure least-loaded causes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar


class Rng(Protocol):
    """The slice of `random.Random` the balancer uses (inject a seeded one in tests)."""

    def randrange(self, stop: int, /) -> int: ...


class Candidate(Protocol):
    @property
    def outstanding(self) -> int: ...

    def usable(self, now: float) -> bool:
        """False while ejected (refused connections) or known to be draining."""
        ...


C = TypeVar("C", bound=Candidate)


def pick(replicas: Sequence[C], rng: Rng, now: float, exclude: Collection[C] = ()) -> C | None:
    """Choose a replica for one request, or None when none is left outside `exclude`.

    Ejected replicas are avoided while any other remains; if every remaining replica is ejected,
    they are used anyway (an ejection is a guess, and failing fast beats refusing).

    O(1) in the usual case: two distinct replicas are drawn from the whole list and kept when
    both are eligible (usable, not excluded). Otherwise the eligible ones are listed and the
    two drawn from them (O(n), only while some are ejected or tried). Either way the pair is
    uniform over the eligible pairs, since a rejected draw is simply drawn again from those."""
    n = len(replicas)
    if not exclude and n == 1:
        only = replicas[0]
        return only
    if n >= 2:
        a, b = _two(replicas, rng)
        if a.usable(now) and b.usable(now) and not (exclude and (a in exclude or b in exclude)):
            return b if b.outstanding < a.outstanding else a
    pool = [r for r in replicas if r not in exclude] if exclude else list(replicas)
    if not pool:
        return None
    usable = [r for r in pool if r.usable(now)]
    if usable:
        pool = usable
    if len(pool) == 1:
        return pool[0]
    a, b = _two(pool, rng)
    return b if b.outstanding < a.outstanding else a


def _two(pool: Sequence[C], rng: Rng) -> tuple[C, C]:
    """Two distinct members, uniformly."""
    n = len(pool)
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    return pool[i], pool[j]

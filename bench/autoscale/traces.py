"""Load traces for the autoscaling simulator: arrival rate (requests/s) as a function of time.

Rates are in units of one replica's measured capacity (`capacity`), so a trace reads the same
whatever the model: 3.0 means three replicas' worth of work. `events` are the instants at which
the load rises sharply; the time to reach the needed capacity is measured from them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Trace:
    name: str
    duration_s: float
    rate: Callable[[float], float]
    """Replicas' worth of arrivals at time t (multiply by the capacity for requests/s)."""
    events: tuple[float, ...] = ()
    what: str = ""
    initial: float = field(default=0.0)
    """The load before t=0, which the run starts warmed up for (replicas already ready)."""


def _noise(seed: float, t: float, scale: float) -> float:
    """A deterministic noise value per whole second (the same for every algorithm)."""
    return random.Random(int(seed * 1e6) + int(t)).gauss(0.0, scale)


def steady(duration_s: float = 1200) -> Trace:
    return Trace("steady", duration_s, lambda t: 2.5, what="2.5 replicas' worth", initial=2.5)


def step(duration_s: float = 900, at: float = 120) -> Trace:
    return Trace(
        "step",
        duration_s,
        lambda t: 0.6 if t < at else 6.0,
        events=(at,),
        what=f"0.6 -> 6 at {at:g}s (10x)",
        initial=0.6,
    )


def spike(duration_s: float = 1200, at: float = 120, length: float = 60) -> Trace:
    return Trace(
        "spike",
        duration_s,
        lambda t: 8.0 if at <= t < at + length else 1.0,
        events=(at,),
        what=f"1 -> 8 for {length:g}s at {at:g}s",
        initial=1.0,
    )


def ramp(duration_s: float = 2400) -> Trace:
    """Diurnal-ish: a half-sine from 0.3 up to 8 and back over the run."""
    return Trace(
        "ramp",
        duration_s,
        lambda t: 0.3 + 7.7 * math.sin(math.pi * t / duration_s) ** 2,
        what="0.3 -> 8 -> 0.3, sine-squared over 40 min",
        initial=0.3,
    )


def bursty(
    duration_s: float = 1800, period: float = 360, on: float = 60, first: float = 300
) -> Trace:
    """On/off: idle (zero replicas allowed), then a burst, every period."""
    starts = tuple(first + k * period for k in range(int((duration_s - first) // period)))

    def rate(t: float) -> float:
        return 4.0 if any(s <= t < s + on for s in starts) else 0.0

    return Trace(
        "bursty", duration_s, rate, events=starts, what=f"0, then 4 for {on:g}s every {period:g}s"
    )


def noisy(duration_s: float = 1200, seed: float = 7.0) -> Trace:
    return Trace(
        "noisy",
        duration_s,
        lambda t: max(0.0, 2.5 + _noise(seed, t, 0.6)),
        what="2.5 +- 0.6 (gaussian, new value every second)",
        initial=2.5,
    )


def all_traces(scale: float = 1.0) -> list[Trace]:
    """Every trace; `scale` < 1 shortens them (for the smoke test)."""
    return [
        steady(1200 * scale),
        step(900 * scale, at=120 * scale),
        spike(1200 * scale, at=120 * scale),
        ramp(2400 * scale),
        bursty(1800 * scale, period=360 * scale, on=60 * scale, first=300 * scale),
        noisy(1200 * scale),
    ]

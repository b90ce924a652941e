"""Retry budget: a token bucket so retries stay a bounded share of traffic and never multiply an
overload (the Finagle / gRPC `retryThrottling` idea). Each request earns `ratio` tokens, time earns
`min_per_s` tokens per second, a retry spends one token; the bucket holds at most `max_tokens`."""

from __future__ import annotations

from collections.abc import Callable


class RetryBudget:
    __slots__ = ("_clock", "_last", "_rate", "_ratio", "_tokens", "max_tokens")

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        max_tokens: float,
        clock: Callable[[], float],
    ) -> None:
        if ratio < 0 or min_per_s < 0 or max_tokens < 0:
            raise ValueError("retry budget parameters must be >= 0")
        self._ratio = ratio
        self._rate = min_per_s
        self.max_tokens = max_tokens
        self._clock = clock
        self._last = clock()
        # Start with one second's worth of floor, so a fresh gateway can retry at all.
        self._tokens = min(max_tokens, min_per_s)

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0:
            self._last = now
            self._tokens = min(self.max_tokens, self._tokens + elapsed * self._rate)

    def record_request(self) -> None:
        tokens = self._tokens + self._ratio
        self._tokens = tokens if tokens < self.max_tokens else self.max_tokens

    def try_spend(self) -> bool:
        """Take one token for a retry; False when the budget is spent (do not retry)."""
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # 5 x 0.2 must buy a retry despite float rounding
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

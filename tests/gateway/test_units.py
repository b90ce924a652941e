"""Pure parts of the gateway, deterministic: routing table, P2C, retry budget, token table."""

from __future__ import annotations

import collections
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shoal.gateway.auth import Authenticator, TokenFileError, parse_tokens
from shoal.gateway.balancer import pick
from shoal.gateway.budget import RetryBudget
from shoal.gateway.routing import Route, RouteKind, route
from tests.gateway.manual_clock import ManualClock


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/health/live", Route(RouteKind.LIVE)),
        ("/v2/health/ready", Route(RouteKind.READY)),
        ("/v2/health/other", Route(RouteKind.NOT_FOUND)),
        ("/metrics", Route(RouteKind.METRICS)),
        ("/v2", Route(RouteKind.SERVER_METADATA)),
        ("/v2/", Route(RouteKind.SERVER_METADATA)),
        ("/v1/models", Route(RouteKind.LIST_MODELS)),
        ("/v2/models/iris", Route(RouteKind.MODEL, "iris", "v2")),
        ("/v2/models/iris/infer", Route(RouteKind.MODEL, "iris", "v2")),
        ("/v2/models/iris/versions/1/infer", Route(RouteKind.MODEL, "iris", "v2")),
        ("/v1/models/iris", Route(RouteKind.MODEL, "iris", "v1")),
        ("/v1/models/iris:predict", Route(RouteKind.MODEL, "iris", "v1")),
        ("/v1/models/my-model-2:explain", Route(RouteKind.MODEL, "my-model-2", "v1")),
        ("/iris", Route(RouteKind.MODEL, "iris", "custom")),
        ("/iris/classify", Route(RouteKind.MODEL, "iris", "custom")),
        ("/", Route(RouteKind.NOT_FOUND)),
        ("/v1/models/", Route(RouteKind.LIST_MODELS)),
        ("/v1/models/Iris:predict", Route(RouteKind.NOT_FOUND)),
        ("/v2/models/-bad/infer", Route(RouteKind.NOT_FOUND)),
        ("/v2/models/a_b/infer", Route(RouteKind.NOT_FOUND)),
        ("/v1/other", Route(RouteKind.NOT_FOUND)),
        ("/UPPER/x", Route(RouteKind.NOT_FOUND)),
        ("/" + "a" * 64, Route(RouteKind.NOT_FOUND)),
        ("/metrics/x", Route(RouteKind.NOT_FOUND)),
    ],
)
def test_route_table(path: str, expected: Route) -> None:
    assert route(path) == expected


@dataclass(eq=False)
class Rep:
    name: str
    outstanding: int = 0
    ejected_until: float = 0.0

    def usable(self, now: float) -> bool:
        return now >= self.ejected_until


class ScriptedRng:
    """randrange answers from a script, so each pick is exactly predictable."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[int] = []

    def randrange(self, stop: int, /) -> int:
        self.calls.append(stop)
        value = self.answers.pop(0)
        assert 0 <= value < stop
        return value


def test_p2c_takes_the_less_loaded_of_two_distinct_candidates() -> None:
    a, b, c = Rep("a", 5), Rep("b", 1), Rep("c", 0)
    # i=0 (a); j=0 -> shifted past i to 1 (b): a vs b -> b.
    assert pick([a, b, c], ScriptedRng([0, 0]), now=0.0) is b
    # i=2 (c); j=1 (b): c has fewer.
    assert pick([a, b, c], ScriptedRng([2, 1]), now=0.0) is c
    # Ties go to the first drawn.
    a.outstanding = b.outstanding = 3
    assert pick([a, b, c], ScriptedRng([1, 0]), now=0.0) is b


def test_p2c_never_compares_a_replica_with_itself() -> None:
    reps = [Rep(str(i)) for i in range(2)]
    rng = ScriptedRng([1, 1])
    with pytest.raises(AssertionError):
        # the second draw is over n-1 values, so 1 is out of range for two replicas
        pick(reps, rng, now=0.0)
    assert rng.calls == [2, 1]


def test_p2c_excludes_tried_and_avoids_ejected() -> None:
    a, b, c = Rep("a"), Rep("b", ejected_until=10.0), Rep("c")
    rng = random.Random(1)
    for _ in range(50):
        assert pick([a, b, c], rng, now=5.0, exclude=[a]) is c
    assert pick([a, b], rng, now=5.0, exclude=[a]) is b, "an ejected replica beats none"
    assert pick([a], rng, now=5.0, exclude=[a]) is None
    assert pick([b], rng, now=5.0) is b
    assert pick([], rng, now=0.0) is None


def test_p2c_steers_away_from_a_loaded_replica() -> None:
    busy, idle1, idle2 = Rep("busy", 100), Rep("idle1"), Rep("idle2")
    rng = random.Random(42)
    picks = [pick([busy, idle1, idle2], rng, now=0.0) for _ in range(300)]
    assert busy not in picks, "the busiest of three is never the lesser of two"
    assert {p.name for p in picks if p} == {"idle1", "idle2"}


def test_retry_budget_limits_retries_to_a_share_of_requests() -> None:
    clock = ManualClock(0.0)
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, max_tokens=100.0, clock=clock)
    assert not budget.try_spend(), "no floor, no traffic: no retry"
    for _ in range(100):
        budget.record_request()
    spent = 0
    while budget.try_spend():
        spent += 1
    assert spent == 20


def test_retry_budget_floor_refills_with_time_and_is_capped() -> None:
    clock = ManualClock(0.0)
    budget = RetryBudget(ratio=0.2, min_per_s=2.0, max_tokens=5.0, clock=clock)
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend(), "starts with one second of floor"
    clock.now = 1.0
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now = 100.0
    assert budget.tokens == 5.0, "capped"
    for _ in range(1000):
        budget.record_request()
    assert budget.tokens == 5.0


def test_retry_budget_rejects_negative_parameters() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        RetryBudget(-0.1, 1.0, 1.0, ManualClock(0.0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("tok-aaaaaaaa: '*'", {"tok-aaaaaaaa": frozenset({"*"})}),
        ('{"tok-bbbbbbbb": ["iris", "adder"]}', {"tok-bbbbbbbb": frozenset({"iris", "adder"})}),
        ("tokens:\n  tok-cccccccc: [iris]\n", {"tok-cccccccc": frozenset({"iris"})}),
    ],
)
def test_parse_tokens(text: str, expected: dict[str, frozenset[str]]) -> None:
    assert parse_tokens(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must map token"),
        ("short: '*'", "at least 8"),
        ("tok-dddddddd: iris", "list of names"),
        ("tok-dddddddd: [1]", "list of names"),
        ("{unclosed", "not valid YAML"),
    ],
)
def test_parse_tokens_rejects(text: str, message: str) -> None:
    with pytest.raises(TokenFileError, match=message):
        parse_tokens(text)


def test_authenticator_decisions() -> None:
    auth = Authenticator(
        {"tok-all-models": frozenset({"*"}), "tok-iris-only": frozenset({"iris"})},
        protect_health=False,
    )
    assert auth.check(b"Bearer tok-all-models", "adder") is None
    assert auth.check(b"bearer tok-iris-only", "iris") is None
    denial = auth.check(b"Bearer tok-iris-only", "adder")
    assert denial is not None
    assert denial.status == 403
    assert "adder" in denial.message
    for header, status in [
        (None, 401),
        (b"Basic dXNlcjpwYXNz", 401),
        (b"Bearer", 401),
        (b"Bearer tok-unknown-x", 401),
        (b"Bearer tok-all-model", 401),
    ]:
        denial = auth.check(header, "iris")
        assert denial is not None
        assert denial.status == status, header
    assert auth.check(b"Bearer tok-iris-only", None) is None, "gateway endpoints: any token"
    auth.replace({})
    assert auth.check(b"Bearer tok-all-models", "iris") is not None


def test_metrics_count_codes_latency_buckets_and_retries() -> None:
    from prometheus_client import generate_latest

    from shoal.gateway.metrics import GatewayMetrics
    from shoal.gateway.registry import Registry
    from shoal.gateway.settings import GatewaySettings

    m = GatewayMetrics(Registry(GatewaySettings(), ManualClock(0.0)))
    m.observe("iris", 200, 0.0005)  # on a bucket bound: counted in that bucket
    m.observe("iris", 200, 0.003)
    m.observe("iris", 503, 100.0)
    m.retried("iris", "connect")
    text = generate_latest(m.prometheus).decode()
    assert 'shoal_gateway_requests_total{code="200",model="iris"} 2.0' in text
    assert 'shoal_gateway_requests_total{code="503",model="iris"} 1.0' in text
    assert 'shoal_gateway_request_duration_seconds_bucket{le="0.0005",model="iris"} 1.0' in text
    assert 'shoal_gateway_request_duration_seconds_bucket{le="0.005",model="iris"} 2.0' in text
    assert 'shoal_gateway_request_duration_seconds_bucket{le="30.0",model="iris"} 2.0' in text
    assert 'shoal_gateway_request_duration_seconds_bucket{le="+Inf",model="iris"} 3.0' in text
    assert 'shoal_gateway_request_duration_seconds_count{model="iris"} 3.0' in text
    assert 'shoal_gateway_retries_total{model="iris",reason="connect"} 1.0' in text


class CountingReplicas(list[Rep]):
    """A replica list that counts how many of its members were looked at."""

    def __init__(self, reps: list[Rep]) -> None:
        super().__init__(reps)
        self.reads = 0

    def __getitem__(self, i: Any) -> Any:
        self.reads += 1
        return super().__getitem__(i)

    def __iter__(self) -> Iterator[Rep]:
        for r in super().__iter__():
            self.reads += 1
            yield r


def test_p2c_looks_at_two_replicas_not_all_when_all_are_usable() -> None:
    reps = CountingReplicas([Rep(str(i), i % 7) for i in range(1000)])
    rng = random.Random(3)
    for _ in range(100):
        reps.reads = 0
        assert pick(reps, rng, now=0.0) is not None
        assert reps.reads == 2, "P2C over 1000 usable replicas must be O(1)"


def test_p2c_with_some_ejected_stays_uniform_over_the_usable_pairs() -> None:
    reps = [Rep(str(i)) for i in range(6)]
    reps[0].ejected_until = reps[1].ejected_until = 10.0  # 0 and 1 are ejected
    rng = random.Random(7)
    counts = collections.Counter(pick(reps, rng, now=5.0).name for _ in range(8000))  # type: ignore[union-attr]
    assert set(counts) == {"2", "3", "4", "5"}
    # equal load, ties to the first drawn: each usable replica ~1/4 of the picks
    for name in "2345":
        assert counts[name] == pytest.approx(2000, rel=0.1)

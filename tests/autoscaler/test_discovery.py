"""`dns+http://` gateway discovery: real gateways' /metrics on 127.0.0.1 and 127.0.0.2 at one
port behind an injected resolver (what a headless Service's name resolves to), the cache's
re-resolution on a fake clock, and resolution failures."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from shoal.operator.autoscaler.discovery import DnsEntry, GatewayTargets, loop_resolver
from shoal.operator.autoscaler.settings import from_env as settings_from_env
from tests.autoscaler.test_loop import Api, Cache, Clock, MetricsServer, gateway_text, make_loop
from tests.autoscaler.test_loop import msvc as modelservice

HOST = "shoal-gateway-metrics.ns.svc.cluster.local"


class Resolver:
    """Answers what the test sets (an OSError: the name does not resolve); counts the asks."""

    def __init__(self, answer: Sequence[str] | OSError) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


@pytest.fixture
async def two_gateways() -> AsyncIterator[tuple[MetricsServer, MetricsServer]]:
    """Two gateways at one port on two loopback addresses, as two pods behind one name."""
    for _ in range(20):
        a = MetricsServer()
        await a.start()
        b = MetricsServer(host="127.0.0.2", port=a.port)
        try:
            await b.start()
        except OSError:  # the port is taken on 127.0.0.2: try another
            await a.stop()
            continue
        yield a, b
        await a.stop()
        await b.stop()
        return
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


async def test_held_requests_are_summed_over_every_resolved_address(
    two_gateways: tuple[MetricsServer, MetricsServer],
) -> None:
    a, b = two_gateways
    a.body, b.body = gateway_text(3), gateway_text(6)
    # 127.0.0.3: an address that resolves but does not answer (a pod going away): unknown.
    resolver = Resolver(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    cache = Cache(modelservice(0))
    api, clock = Api(cache), Clock()
    loop = make_loop(
        cache, api, clock, gateway_metrics_urls=(f"dns+http://{HOST}:{a.port}/metrics",)
    )
    loop.gateways.resolver = resolver
    await loop.tick()
    await loop.aclose()
    assert resolver.asked == [(HOST, a.port)]
    assert (a.hits, b.hits) == (1, 1)
    assert api.scales == [3], "ceil((3 + 6) / 4): the sum over both gateways"


async def test_static_and_dns_entries_mix() -> None:
    resolver = Resolver(["10.0.0.2", "10.0.0.1", "fd00::5"])
    targets = GatewayTargets(
        ["http://static:9090/metrics", f"dns+http://{HOST}:9090/metrics"],
        resolver=resolver,
        clock=Clock(),
    )
    assert await targets.urls() == [
        "http://static:9090/metrics",
        "http://10.0.0.1:9090/metrics",
        "http://10.0.0.2:9090/metrics",
        "http://[fd00::5]:9090/metrics",
    ]


async def test_resolved_at_most_every_refresh_seconds() -> None:
    clock = Clock()
    resolver = Resolver(["10.0.0.1"])
    targets = GatewayTargets(
        [f"dns+http://{HOST}:9090/metrics"], resolver=resolver, clock=clock, refresh_s=5.0
    )
    assert await targets.urls() == ["http://10.0.0.1:9090/metrics"]
    resolver.answer = ["10.0.0.1", "10.0.0.2"]  # a second gateway pod became ready
    clock.t += 4.9
    assert await targets.urls() == ["http://10.0.0.1:9090/metrics"], "cached"
    assert len(resolver.asked) == 1
    clock.t += 0.1
    assert await targets.urls() == [
        "http://10.0.0.1:9090/metrics",
        "http://10.0.0.2:9090/metrics",
    ]
    assert len(resolver.asked) == 2


async def test_a_failed_resolution_keeps_the_last_set_briefly_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    resolver = Resolver(["10.0.0.1", "10.0.0.2"])
    targets = GatewayTargets(
        [f"dns+http://{HOST}:9090/metrics"],
        resolver=resolver,
        clock=clock,
        refresh_s=5.0,
        stale_s=30.0,
    )
    known = ["http://10.0.0.1:9090/metrics", "http://10.0.0.2:9090/metrics"]
    assert await targets.urls() == known
    resolver.answer = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with caplog.at_level(logging.WARNING, logger="shoal.operator.autoscaler.discovery"):
        for _ in range(6):  # 5 s apart: t = 5 .. 30 after the last success
            clock.t += 5
            assert await targets.urls() == known
        clock.t += 5  # 35 s: past stale_s
        assert await targets.urls() == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one line per outage, not one per resolution"
    assert len(resolver.asked) == 8, "a failure waits refresh_s too (no hammering the DNS)"
    resolver.answer = ["10.0.0.3"]
    clock.t += 5
    assert await targets.urls() == ["http://10.0.0.3:9090/metrics"]


async def test_the_loop_goes_on_when_nothing_resolves() -> None:
    resolver = Resolver(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    cache = Cache(modelservice(0))
    api, clock = Api(cache), Clock()
    loop = make_loop(cache, api, clock, gateway_metrics_urls=(f"dns+http://{HOST}:9/metrics",))
    loop.gateways.resolver = resolver
    await loop.tick()
    await loop._from_zero()
    await loop.aclose()
    assert api.scales == [], "no gateway known: nothing held, still at zero"
    assert len(resolver.asked) == 1


async def test_the_event_loops_resolver_answers_localhost() -> None:
    # /etc/hosts, through loop.getaddrinfo's executor: no network.
    started = asyncio.get_running_loop().time()
    found = await loop_resolver("localhost", 9090)
    assert set(found) & {"127.0.0.1", "::1"}
    assert asyncio.get_running_loop().time() - started < 5.0


@pytest.mark.parametrize(
    "entry",
    ["dns+ftp://h:1/metrics", "dns+http:///metrics", "dns+h:9090"],
)
def test_a_malformed_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="dns\\+http://HOST:PORT/path"):
        GatewayTargets([entry])


def test_entry_defaults_and_settings() -> None:
    assert DnsEntry.parse("dns+http://g") == DnsEntry("http", "g", 80, "/metrics")
    s = settings_from_env(
        {
            "SHOAL_OPERATOR_AUTOSCALER_GATEWAY_METRICS_URLS": f"dns+http://{HOST}:9090/metrics",
            "SHOAL_OPERATOR_AUTOSCALER_GATEWAY_DNS_REFRESH_SECONDS": "2",
            "SHOAL_OPERATOR_AUTOSCALER_GATEWAY_DNS_STALE_SECONDS": "10",
        }
    )
    assert s.gateway_metrics_urls == (f"dns+http://{HOST}:9090/metrics",)
    assert (s.gateway_dns_refresh_seconds, s.gateway_dns_stale_seconds) == (2.0, 10.0)

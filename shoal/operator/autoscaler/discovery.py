"""Where the gateways' /metrics are: static URLs, or `dns+http://HOST:PORT/path` entries
(Prometheus/Thanos style) that stand for every address HOST resolves to.

Behind a Service a static URL reaches one gateway pod per scrape, but the held requests must be
summed over all of them; a headless Service's name resolves to every ready pod's IP, so a
`dns+` entry is resolved (through the loop's getaddrinfo, off the event loop) and each address
is scraped. The answer is cached for `refresh_s` (the loop asks several times a second); a
failed resolution keeps the last known addresses for `stale_s` and is logged once per outage,
after which the entry has no targets (its gateways are unknown, as silent ones are).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DNS_PREFIX = "dns+"

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the addresses host resolves to; raises OSError when it cannot."""


async def loop_resolver(host: str, port: int) -> list[str]:
    """Every address of `host` (A and AAAA), through the event loop's executor."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class DnsEntry:
    """One `dns+SCHEME://HOST:PORT/path` entry, parsed."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, entry: str) -> DnsEntry:
        parts = urlsplit(entry[len(DNS_PREFIX) :])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway metrics entry {entry!r}: want dns+http://HOST:PORT/path")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/metrics"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    def url(self, address: str) -> str:
        host = address
        if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address):
            host = f"[{address}]"
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass
class _Resolved:
    addresses: tuple[str, ...] = ()
    resolved_at: float = float("-inf")
    """When it was last asked (success or failure): the next ask waits refresh_s from here."""
    ok_at: float = float("-inf")
    failing: bool = False


class GatewayTargets:
    """The gateways' /metrics URLs now: static entries as they are, `dns+` entries expanded."""

    def __init__(
        self,
        entries: Sequence[str],
        *,
        resolver: Resolver = loop_resolver,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = 5.0,
        stale_s: float = 30.0,
    ) -> None:
        self.static = [e for e in entries if not e.startswith(DNS_PREFIX)]
        self.dns = [DnsEntry.parse(e) for e in entries if e.startswith(DNS_PREFIX)]
        self.resolver = resolver
        self.clock = clock
        self.refresh_s = refresh_s
        self.stale_s = stale_s
        self._cache: dict[DnsEntry, _Resolved] = {e: _Resolved() for e in self.dns}

    def __bool__(self) -> bool:
        return bool(self.static or self.dns)

    async def urls(self) -> list[str]:
        """The URLs to scrape; resolves the `dns+` entries whose answer is older than
        refresh_s. Never raises for a resolution failure."""
        now = self.clock()
        due = [e for e in self.dns if now - self._cache[e].resolved_at >= self.refresh_s]
        if due:
            await asyncio.gather(*(self._resolve(e, now) for e in due))
        out = list(self.static)
        for e in self.dns:
            out.extend(e.url(a) for a in self._cache[e].addresses)
        return out

    async def _resolve(self, entry: DnsEntry, now: float) -> None:
        r = self._cache[entry]
        r.resolved_at = now
        try:
            found = await self.resolver(entry.host, entry.port)
            addresses = tuple(sorted({str(ipaddress.ip_address(a)) for a in found}))
        except (OSError, ValueError) as exc:
            # OSError: socket.gaierror (NXDOMAIN, no DNS server) and the like; ValueError: a
            # resolver answer that is not an address.
            if not r.failing:
                log.warning(
                    "gateway discovery: cannot resolve %s (%s); keeping %d known address(es) "
                    "for %.0f s",
                    entry.host,
                    exc,
                    len(r.addresses),
                    self.stale_s,
                )
                r.failing = True
            if now - r.ok_at > self.stale_s:
                r.addresses = ()
            return
        if r.failing:
            log.info("gateway discovery: %s resolves again (%d)", entry.host, len(addresses))
        r.addresses, r.ok_at, r.failing = addresses, now, False

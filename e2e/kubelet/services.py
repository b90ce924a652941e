"""Services without kube-proxy: a userspace TCP proxy on each ClusterIP and a cluster DNS.

The proxy watches Services and EndpointSlices; for every TCP port of a ClusterIP Service it
listens on ``clusterIP:port`` (a /32 on the slot's bridge) and forwards each connection to
a random ready endpoint. The DNS server answers A queries for ``<svc>.<ns>.svc.cluster.local``
(ClusterIP, or the ready endpoints of a headless Service) and NXDOMAIN for everything else: no
query ever leaves the machine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import cast

import httpx

from e2e import network
from e2e.kube import ApiError, Kube, Obj
from e2e.layout import Slot

log = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"


class ServiceProxy:
    def __init__(self, kube: Kube, slot: Slot) -> None:
        self.kube = kube
        self.slot = slot
        self.services: dict[str, Obj] = {}  # "ns/name" -> Service
        self.slices: dict[str, Obj] = {}  # "ns/name" -> EndpointSlice
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._ips: set[str] = set()
        self._dirty = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._informer("/api/v1/services", self.services)),
            asyncio.create_task(
                self._informer("/apis/discovery.k8s.io/v1/endpointslices", self.slices)
            ),
            asyncio.create_task(self._reconcile_loop()),
        ]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers.values():
            server.close()

    async def _informer(self, path: str, store: dict[str, Obj]) -> None:
        def key(o: Obj) -> str:
            return f"{o['metadata']['namespace']}/{o['metadata']['name']}"

        while True:
            try:
                listing = await self.kube.get(path)
                assert listing is not None
                store.clear()
                store.update({key(o): o for o in listing["items"]})
                self._dirty.set()
                rv = listing["metadata"]["resourceVersion"]
                async for event in self.kube.watch(path, {}, rv):
                    if event["type"] == "ERROR":
                        break
                    if event["type"] == "BOOKMARK":
                        continue
                    obj = event["object"]
                    if event["type"] == "DELETED":
                        store.pop(key(obj), None)
                    else:
                        store[key(obj)] = obj
                    self._dirty.set()
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, httpx.HTTPError) as exc:
                log.warning("watch %s: %s; listing again", path, exc)
                await asyncio.sleep(1)
            except Exception:
                log.exception("watch %s failed; listing again", path)
                await asyncio.sleep(1)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile()
            except Exception:
                log.exception("service proxy reconcile failed")

    async def _reconcile(self) -> None:
        want: dict[tuple[str, int], tuple[str, str, str]] = {}
        for svc in self.services.values():
            ip = svc["spec"].get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in svc["spec"].get("ports", []):
                if port.get("protocol", "TCP") == "TCP":
                    meta = svc["metadata"]
                    want[(ip, port["port"])] = (
                        meta["namespace"],
                        meta["name"],
                        port.get("name", ""),
                    )
        for addr in [a for a in self._servers if a not in want]:
            self._servers.pop(addr).close()
        for ip in {a[0] for a in want} - self._ips:
            await asyncio.to_thread(network.add_service_ip, self.slot, ip)
            self._ips.add(ip)
        for addr, target in want.items():
            if addr not in self._servers:
                try:
                    self._servers[addr] = await asyncio.start_server(
                        self._handler(*target), addr[0], addr[1], reuse_address=True
                    )
                except OSError as exc:
                    log.warning("cannot listen on %s:%d: %s", addr[0], addr[1], exc)
        for ip in self._ips - {a[0] for a in want}:
            await asyncio.to_thread(network.del_service_ip, self.slot, ip)
            self._ips.discard(ip)

    def ready_endpoints(self, ns: str, name: str, port_name: str | None) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for s in self.slices.values():
            meta = s["metadata"]
            if meta["namespace"] != ns:
                continue
            if meta.get("labels", {}).get("kubernetes.io/service-name") != name:
                continue
            ports = [p["port"] for p in s.get("ports") or [] if (p.get("name") or "") == port_name]
            for ep in s.get("endpoints") or []:
                if ep.get("conditions", {}).get("ready") is False:
                    continue
                for addr in ep["addresses"]:
                    out += [(addr, p) for p in ports] if port_name is not None else [(addr, 0)]
        return out

    def _handler(
        self, ns: str, name: str, port_name: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            endpoints = self.ready_endpoints(ns, name, port_name)
            if not endpoints:
                writer.close()
                return
            ip, port = random.choice(endpoints)
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
            except (OSError, TimeoutError):
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            for w in (writer, up_writer):
                w.close()

        return handle

    def resolve(self, qname: str) -> list[str] | None:
        """A records for a cluster name; None means the name does not exist."""
        suffix = f".svc.{CLUSTER_DOMAIN}"
        name = qname.rstrip(".").lower()
        if not name.endswith(suffix):
            return None
        parts = name[: -len(suffix)].split(".")
        if len(parts) != 2:
            return None
        svc = self.services.get(f"{parts[1]}/{parts[0]}")
        if svc is None:
            return None
        ip = svc["spec"].get("clusterIP")
        if ip and ip != "None":
            return [ip]
        return sorted({addr for addr, _ in self.ready_endpoints(parts[1], parts[0], None)})


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()  # one side broke: end the other too


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolve: Callable[[str], list[str] | None]) -> None:
        self.resolve = resolve
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = dns_reply(data, self.resolve)
        except (IndexError, struct.error, UnicodeDecodeError):
            return
        if self.transport is not None:
            self.transport.sendto(reply, addr)


def dns_reply(query: bytes, resolve: Callable[[str], list[str] | None]) -> bytes:
    """Answers one DNS query (A records only; other types get an empty NOERROR answer)."""
    qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode())
        pos += 1 + n
    qtype, _qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
    question = query[12 : pos + 5]
    ips = resolve(".".join(labels)) if qdcount == 1 else None
    rcode = 3 if ips is None else 0  # NXDOMAIN for names outside the cluster
    answers = [ip for ip in ips or [] if qtype == 1]
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
    body = b"".join(
        struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(ip) for ip in answers
    )
    return header + question + body


async def serve_dns(host: str, proxy: ServiceProxy, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(proxy.resolve), local_addr=(host, 53)
    )
    try:
        await stop.wait()
    finally:
        transport.close()


def resolv_conf(namespace: str, nameserver: str) -> str:
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"nameserver {nameserver}\nsearch {search}\noptions ndots:5\n"

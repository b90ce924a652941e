"""Admission: what the gateway decides on a request's head, before reading its body.

Route, method, token, model, deadline and request id are judged here, and the head the replica
will receive is built in the same pass over the headers: the gateway's token, hop-by-hop headers
(and those the client's `Connection` names), trailers (never added), and any client-sent
forwarding headers are dropped; `X-Forwarded-For` and `Forwarded` are set from the socket's peer.
Refusals raise GatewayError (errors.py), so the HTTP front end can answer without buffering."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.gateway.auth import Authenticator
from shoal.gateway.errors import BadRequest, MethodNotAllowed, NotFound, echo
from shoal.gateway.registry import Registry
from shoal.gateway.routing import Route, RouteKind, route
from shoal.gateway.settings import GatewaySettings
from shoal.gateway.upstream import HOP_BY_HOP
from shoal.gateway.wire import Request

TIMEOUT_HEADER = b"x-shoal-timeout-ms"
MODEL_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
SELF_METHODS = frozenset({b"GET", b"HEAD"})
_ROUTE_CACHE_SIZE = 4096
# Request headers never forwarded as they came: framing and host (the gateway sets its own), the
# deadline (sent as the remaining budget), and what only a proxy may say about the client.
_NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"expect",
    TIMEOUT_HEADER,
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"forwarded",
    b"x-real-ip",
    b"authorization",
}
_CONNECTION_OPTIONS = frozenset({b"keep-alive", b"close", b"upgrade", b""})
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
"""A usable x-request-id: visible ASCII, bounded (it goes into logs and response headers)."""


@dataclass(frozen=True, slots=True)
class ModelAdmission:
    """A model request admitted on its head: where it goes and what the replica will get."""

    model: str
    prefix: bytes
    """Request line and forwarded headers (without host, framing and deadline)."""
    timeout_ms: int


def header(req: Request, name: bytes) -> bytes | None:
    for hname, value in req.headers:
        if hname == name:
            return value
    return None


def forwarded_for(peer: str) -> bytes:
    if not peer:  # not a TCP peer (a Unix socket): nothing to say
        return b""
    node = f'"[{peer}]"' if ":" in peer else peer
    return f"x-forwarded-for: {peer}\r\nforwarded: for={node}\r\n".encode()


class Admission:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        auth: Authenticator | None,
        request_ids: RequestIds,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.auth = auth
        self._ids = request_ids
        self._routes: dict[str, Route] = {}

    def route_of(self, path: str) -> Route:
        r = self._routes.get(path)
        if r is None:
            r = route(path)
            if len(self._routes) < _ROUTE_CACHE_SIZE:  # custom paths may be unbounded
                self._routes[path] = r
        return r

    def visible_models(self, authorization: bytes | None) -> list[str]:
        names = sorted(self.registry.models)
        if self.auth is None:
            return names
        return [n for n in names if self.auth.allows(authorization, n)]

    def admit(self, req: Request) -> None:
        r = self.route_of(req.path)
        if r.kind is RouteKind.MODEL:
            req.admitted = self._admit_model(req, r.model)
        else:
            self._admit_gateway_route(req, r)
            req.admitted = r

    def _admit_gateway_route(self, req: Request, r: Route) -> None:
        authorization = _single_authorization(req)
        if r.kind is RouteKind.NOT_FOUND:
            raise NotFound(
                f"no route for {echo(req.path)}",
                known_models=self.visible_models(authorization),
            )
        if req.method not in SELF_METHODS:
            raise MethodNotAllowed(
                f"method {echo(req.method.decode())} not allowed on {echo(req.path)}"
            )
        if self.auth is None:
            return
        protected = r.kind in (RouteKind.LIST_MODELS, RouteKind.METRICS) or (
            self.auth.protect_health and r.kind in (RouteKind.LIVE, RouteKind.READY)
        )
        if protected:
            denial = self.auth.check(authorization, None)
            if denial is not None:
                raise denial

    def _admit_model(self, req: Request, name: str) -> ModelAdmission:
        if req.method not in MODEL_METHODS:
            raise MethodNotAllowed(f"method {echo(req.method.decode())} not allowed")
        # One pass over the headers: pick out ours, encode the rest for the replica.
        timeout_raw: bytes | None = None
        authorization: bytes | None = None
        connection: bytes | None = None
        request_id: bytes | None = None
        forwarded = bytearray()
        for hname, value in req.headers:
            if hname in _NOT_FORWARDED:
                if hname == TIMEOUT_HEADER:
                    timeout_raw = value
                elif hname == b"authorization":
                    if authorization is not None:
                        raise _duplicate_authorization()
                    authorization = value
                    if self.auth is None:
                        # Not the gateway's token: the application's header, passed on.
                        forwarded += b"authorization: " + value + b"\r\n"
                elif hname == b"connection":
                    connection = value
                elif hname == b"x-request-id":
                    request_id = value
                continue
            forwarded += hname + b": " + value + b"\r\n"
        if connection is not None:
            forwarded = _drop_connection_options(forwarded, connection)
        if self.auth is not None:
            denial = self.auth.check(authorization, name)
            if denial is not None:
                raise denial
        if name not in self.registry.models:
            raise NotFound(
                f"unknown model {name!r}", known_models=self.visible_models(authorization)
            )
        s = self.settings
        if timeout_raw is None:
            timeout_ms = s.default_timeout_ms
        else:
            try:
                timeout_ms = int(timeout_raw)
            except ValueError:
                timeout_ms = 0
            if not 0 < timeout_ms <= s.max_timeout_ms:
                raise BadRequest(f"x-shoal-timeout-ms must be an integer in 1..{s.max_timeout_ms}")
        if request_id is None or _REQUEST_ID.fullmatch(request_id) is None:
            # The replica adopts it (and echoes it back), so its logs and ours line up.
            request_id = self._ids.next()
        req.request_id = request_id
        forwarded += b"x-request-id: " + request_id + b"\r\n" + forwarded_for(req.peer)
        target = req.path.encode("latin-1")
        if req.query:
            target += b"?" + req.query
        prefix = b"%b %b HTTP/1.1\r\n%b" % (req.method, target, bytes(forwarded))
        return ModelAdmission(name, prefix, timeout_ms)


class RequestIds:
    """The gateway's own request ids: a random per-process prefix and a counter."""

    def __init__(self, prefix: int) -> None:
        self._prefix = b"gw%08x" % prefix
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return b"%b-%d" % (self._prefix, self._n)


def _duplicate_authorization() -> BadRequest:
    # Two tokens: which one counts would be the parser's guess; refuse instead.
    return BadRequest("send one Authorization header, not several")


def _single_authorization(req: Request) -> bytes | None:
    found: bytes | None = None
    for hname, value in req.headers:
        if hname == b"authorization":
            if found is not None:
                raise _duplicate_authorization()
            found = value
    return found


def _drop_connection_options(forwarded: bytearray, connection: bytes) -> bytearray:
    """Remove the headers the client's `Connection` header names (hop-by-hop by declaration)."""
    named = {t.strip().lower() for t in connection.split(b",")} - _CONNECTION_OPTIONS
    if not named:
        return forwarded
    kept = bytearray()
    for line in bytes(forwarded).split(b"\r\n"):
        if line and line.split(b":", 1)[0] not in named:
            kept += line + b"\r\n"
    return kept

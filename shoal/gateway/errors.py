"""The gateway's one error model: every failure it answers itself is an exception that carries
its status, raised where the failure is found (the HTTP front end, admission on the request
head, the request path) and turned into a response in one place, `render`.

`retry_after` marks failures a client should retry later (the gateway or the model is busy or
briefly without replicas): those answers carry `Retry-After`."""

from __future__ import annotations

import logging
from typing import ClassVar

from shoal.gateway.wire import JSON_HEADER, json_body

log = logging.getLogger(__name__)

MAX_ECHO = 100
"""Longest piece of a client's input (a path, a model name) quoted back in an error message."""


def echo(text: str) -> str:
    """`text` as an error message may quote it: bounded, so a 60 KB path does not come back."""
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."


class GatewayError(Exception):
    status: ClassVar[int] = 500
    retry_after: bool = False
    extra_headers: ClassVar[bytes] = b""

    def __init__(self, message: str, *, retry_after: bool | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401
    extra_headers = b'www-authenticate: Bearer realm="shoal"\r\n'


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class MethodNotAllowed(GatewayError):
    status = 405


class RequestTimeout(GatewayError):
    status = 408


class PayloadTooLarge(GatewayError):
    status = 413


class UriTooLong(GatewayError):
    status = 414


class HeadersTooLarge(GatewayError):
    status = 431


class NotSupported(GatewayError):
    status = 501


class BadGateway(GatewayError):
    """The replica failed this request (refused, reset, or sent a broken response)."""

    status = 502


class Unavailable(GatewayError):
    """No replica can take the request now (none ready, or the hold queue is full)."""

    status = 503
    retry_after = True


class Overloaded(Unavailable):
    """The gateway itself is at a limit (connections, buffered bytes, file descriptors): never
    blamed on a replica."""


class GatewayTimeout(GatewayError):
    status = 504


def render(
    exc: GatewayError, request_id: bytes | None, retry_after_header: bytes
) -> tuple[int, bytes, bytes]:
    """(status, header block, body) of the answer to `exc`. The one place statuses become bytes."""
    headers = JSON_HEADER + exc.extra_headers
    if exc.retry_after:
        headers += retry_after_header
    if request_id is not None:
        headers += b"x-request-id: " + request_id + b"\r\n"
        if exc.status >= 500:
            # Request ids are validated visible ASCII (admission), so this never raises.
            log.warning("%d %s", exc.status, exc.message, extra={"request_id": request_id.decode()})
    return exc.status, headers, json_body(exc.status, exc.message, **exc.extra)

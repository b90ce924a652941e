"""What the gateway's HTTP front end hands to the request path, and the bytes it writes back:
the parsed request, status lines, JSON error bodies."""

from __future__ import annotations

import http

import orjson


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


_STATUS_LINES: dict[int, bytes] = {}


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = _status_line(code)
    return line


JSON_HEADER = b"content-type: application/json\r\n"


def json_body(status: int, message: str, **extra: object) -> bytes:
    return orjson.dumps({"error": message, "status": status, **extra})


class Request:
    """One request. Built when its head is in (admission sees it without a body); `body` is
    set once the whole message has arrived."""

    __slots__ = (
        "admitted",
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "received_at",
        "request_id",
        "reserved",
    )

    def __init__(
        self,
        method: bytes,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        received_at: float,
        peer: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        """Names lower-cased, in arrival order; trailers are never added."""
        self.body = b""
        self.keep_alive = keep_alive
        self.received_at = received_at
        self.peer = peer
        """The client's address as the gateway's socket sees it (not a forwarded header)."""
        self.request_id: bytes | None = None
        """Set by admission for model requests (the client's, when usable, or the gateway's)."""
        self.admitted: object = None
        """What admission worked out on the head, for the request path (route, model, ...)."""
        self.reserved = 0
        """Body bytes counted against the gateway's total buffer cap for this request."""

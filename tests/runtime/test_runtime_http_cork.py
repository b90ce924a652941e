"""One write per fixed-length response (http_cork.py), through the runtime's real protocol class
(uvicorn's httptools protocol behind the guard) and its request cycle; the only stand-in is the
socket end of the transport, which records each write (the syscall uvloop would make)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from shoal.runtime.http_guard import Limits, protocol_with

App = Callable[..., Awaitable[None]]


class RecordingTransport:
    """The socket end: each `write` is one send."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.changed.set()

    async def until(self, cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not cond():
                self.changed.clear()
                await self.changed.wait()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.changed.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


async def fixed(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await receive()
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def connect(app: App) -> tuple[Any, RecordingTransport]:
    config = Config(app, ws="none", lifespan="off", access_log=False, log_config=None)
    config.load()
    cls = protocol_with(Limits())
    proto = cls(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


GET = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"


async def test_a_fixed_length_response_is_one_write_of_head_and_body() -> None:
    proto, t = connect(fixed)
    proto.data_received(GET)
    await t.until(lambda: bool(t.writes))
    assert proto.cycle.response_complete  # written once, complete in the same step
    assert len(t.writes) == 1
    head, _, body = t.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'


async def test_pipelined_requests_get_one_write_each_in_order() -> None:
    proto, t = connect(fixed)
    proto.data_received(GET + GET.replace(b"/x", b"/y"))
    await t.until(lambda: len(t.writes) == 2)
    assert all(w.startswith(b"HTTP/1.1 200 OK") and w.endswith(b'{"ok":true}') for w in t.writes)


async def test_a_head_request_gets_its_head_at_completion() -> None:
    proto, t = connect(fixed)
    proto.data_received(b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n")
    await t.until(lambda: bool(t.writes))
    assert len(t.writes) == 1
    assert t.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert t.writes[0].endswith(b"\r\n\r\n")  # no body for HEAD


async def test_a_streaming_response_head_is_not_held() -> None:
    release = asyncio.Event()

    async def stream(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release.wait()  # e.g. server-sent events: the client needs the head now
        await send({"type": "http.response.body", "body": b"event", "more_body": False})

    proto, t = connect(stream)
    proto.data_received(GET)
    await t.until(lambda: bool(t.writes))
    assert t.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding: chunked" in t.writes[0]
    release.set()
    await t.until(lambda: len(t.writes) == 2)
    assert b"event" in t.writes[1]


async def test_a_closing_response_is_written_before_the_close() -> None:
    proto, t = connect(fixed)
    proto.data_received(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    await t.until(lambda: t.closed)
    assert len(t.writes) == 1
    assert t.writes[0].endswith(b'{"ok":true}')

"""The replica against hostile and careless clients, over real sockets on loopback: bounded
request heads, head, body and idle timeouts, and a cap on open connections (issue 10, item 8).

Each limit is set small (and each timeout short) so a test sees it act within its deadline; the
defaults are in settings.py."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import ServeProcess
from shoal.runtime.uvicorn_runner import connection_cap

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests/runtime/sample_models.py"
BODY = b'{"instances":[1]}'
PREDICT = b"POST /v1/models/echo:predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (
    len(BODY),
    BODY,
)
WITHIN_S = 20.0  # generous: the machine is shared; each limit acts in well under a second


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with ServeProcess(
        f"echo={MODELS}:Echo",
        "--max-header-bytes",
        "4096",
        "--max-header-count",
        "20",
        "--head-timeout-s",
        "0.5",
        "--body-timeout-s",
        "0.5",
        "--keep-alive-timeout-s",
        "0.5",
        cwd=ROOT,
    ) as proc:
        yield proc


def connect(proc: ServeProcess) -> socket.socket:
    sock = socket.create_connection((proc.host, proc.port), timeout=WITHIN_S)
    sock.settimeout(WITHIN_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes:
    then the test fails on what it got)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + WITHIN_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(
                f"still open after {WITHIN_S}s; got {b''.join(chunks)!r}"
            ) from None
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """One response (head and a content-length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def send_all_tolerating_close(sock: socket.socket, data: bytes) -> None:
    """Send `data`, stopping where the server closed the connection (it may, mid-way)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def test_a_normal_request_gets_its_answer(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b'{"predictions":[1]}')


def test_an_unterminated_header_over_the_limit_is_431_and_closed(server: ServeProcess) -> None:
    with connect(server) as sock:
        # 1 MB of one header, never terminated: without a limit httptools buffers all of it
        send_all_tolerating_close(
            sock, b"GET /v2/health/live HTTP/1.1\r\nx-big: " + b"a" * (1 << 20)
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"request head too large" in answer


def test_a_head_just_under_the_limit_is_served(server: ServeProcess) -> None:
    r = httpx.get(f"{server.url}/v2/health/live", headers={"x-pad": "a" * 3500})
    assert r.status_code == 200


def test_a_body_beside_a_small_head_is_not_counted_as_head(server: ServeProcess) -> None:
    # one write of a small head and a 12 KB body (more than max_header_bytes)
    r = httpx.post(f"{server.url}/v1/models/echo:predict", json={"instances": ["b" * 12000]})
    assert r.status_code == 200


def test_too_many_header_fields_are_431_and_closed(server: ServeProcess) -> None:
    fields = b"".join(b"x-h%d: 1\r\n" % i for i in range(21))
    with connect(server) as sock:
        send_all_tolerating_close(
            sock, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"too many header fields" in answer


def test_too_many_fields_of_an_unfinished_head_are_431_before_it_ends(
    server: ServeProcess,
) -> None:
    # a slow client's fields, one write each, the head never terminated: the count is checked
    # after every read, so the server need not hold the whole head to refuse it
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n")
        for i in range(25):
            send_all_tolerating_close(sock, b"x-h%d: 1\r\n" % i)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"too many header fields" in answer


def test_a_slow_head_is_408_and_closed(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n")  # ...and never the rest
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request head not received in time" in answer


def test_a_slow_body_is_408_and_closed(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/models/echo:predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received in time" in answer
    # the replica is fine
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_connection_that_sends_nothing_is_closed(server: ServeProcess) -> None:
    with connect(server) as sock:
        assert read_until_closed(sock) == b""


def test_an_idle_kept_alive_connection_is_closed(server: ServeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(PREDICT)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert read_until_closed(sock) == b""


def test_connections_over_the_cap_evict_idle_ones_or_get_503() -> None:
    cap = 6
    with ServeProcess(
        f"echo={MODELS}:Echo",
        "--max-connections",
        str(cap),
        "--head-timeout-s",
        "60",
        cwd=ROOT,
    ) as proc:
        # Fill every slot with a connection that sent nothing: idle, so a newcomer takes the
        # oldest one's place and is served.
        idle = [connect(proc) for _ in range(cap)]
        try:
            with connect(proc) as newcomer:
                newcomer.sendall(PREDICT)
                assert read_response(newcomer).startswith(b"HTTP/1.1 200")
            assert read_until_closed(idle[0]) == b""  # the oldest idle one made room
        finally:
            for sock in idle:
                sock.close()
        # Fill every slot with a half-sent request (not idle: nobody is evicted): the
        # connection over the cap gets 503 and is closed at once.
        busy = [connect(proc) for _ in range(cap)]
        try:
            for sock in busy:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
            deadline = time.monotonic() + WITHIN_S
            while True:  # the server may not have seen every close of the idle ones yet
                with connect(proc) as over:
                    answer = read_until_closed(over)
                if answer.startswith(b"HTTP/1.1 503") or time.monotonic() > deadline:
                    break
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"retry-after: 1" in answer
        finally:
            for sock in busy:
                sock.close()
        # once they are gone, clients are served again
        deadline = time.monotonic() + WITHIN_S
        while httpx.get(f"{proc.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline


def test_the_connection_cap_stays_below_the_file_descriptor_limit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = connection_cap(10**9)
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raised >= soft  # raised to the hard limit where it can be
    assert 0 < cap <= raised - 64
    assert connection_cap(5) == 5

"""Running the runtime on uvicorn (uvloop + httptools, behind the limits of http_guard.py) on a
socket we bind ourselves: SO_REUSEADDR (a restart need not wait out TIME_WAIT) and never
SO_REUSEPORT (a second process cannot bind the port while the first holds it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, cast

import uvicorn

from shoal.runtime.http_guard import Limits, protocol_with
from shoal.runtime.lifecycle import Runtime
from shoal.runtime.settings import ServeSettings

logger = logging.getLogger(__name__)


class BindError(OSError):
    """A listening socket that could not be had; the message names the address and its use."""


def bind(host: str, port: int, what: str = "") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot serve on {host}:{port}{what}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM starts a drain instead of an immediate shutdown, and the process
    exits normally afterwards (uvicorn would re-raise the signal)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (RuntimeError, ValueError):  # not the main thread
                break
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.runtime.plane.draining or not self.runtime.plane.loaded:
            # A second signal, or nothing loaded to drain: stop now.
            self.should_exit = True
            if sig == signal.SIGINT and self.runtime.plane.draining:
                self.force_exit = True
            return
        logger.info("received %s", signal.Signals(sig).name)
        self.runtime.begin_drain()

    def request_exit(self) -> None:
        self.should_exit = True


async def serve(
    settings: ServeSettings,
    on_listening: Callable[[Runtime, int], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Serve until drained or told to stop. Returns the process exit code."""
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    sockets = [sock]
    runtime = Runtime(settings)
    if settings.metrics_port is not None:
        # One server, two sockets: the app tells them apart by the local port of the
        # connection (the kernel's, not anything the client sends).
        try:
            sockets.append(bind(settings.host, settings.metrics_port, " (the metrics port)"))
        except BindError:
            sock.close()
            raise
        runtime.app.metrics_port = sockets[1].getsockname()[1]
    limits = Limits(
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        head_timeout_s=settings.head_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=connection_cap(settings.max_connections),
    )
    config = uvicorn.Config(
        runtime.app,
        http=protocol_with(limits),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting middleware on the hot path
        date_header=False,
        # typed int, but uvicorn only hands it to loop.call_later, which takes any seconds
        timeout_keep_alive=cast(int, settings.keep_alive_timeout_s),
        timeout_graceful_shutdown=2,  # our drain already waited for the work
        backlog=2048,
    )
    server = _Server(config, runtime)
    runtime.request_exit = server.request_exit
    if settings.port_file:
        _write_port_file(settings.port_file, port)
    logger.info(
        "shoal listening on http://%s:%d (models: %s)",
        settings.host,
        port,
        ", ".join(s.name for s in settings.models),
    )
    if runtime.app.metrics_port is not None:
        logger.info(
            "shoal metrics on http://%s:%d/metrics", settings.host, runtime.app.metrics_port
        )
    waiter: asyncio.Task[None] | None = None
    if on_listening is not None:
        waiter = asyncio.get_running_loop().create_task(on_listening(runtime, port))
    try:
        await server.serve(sockets=sockets)
    finally:
        for s in sockets:
            s.close()
        if waiter is not None and not waiter.done():
            waiter.cancel()
    return runtime.exit_code


def connection_cap(wanted: int) -> int:
    """`wanted`, but below the file descriptor limit (raised to the hard limit first), with a
    reserve for the model's own files and the process's sockets: out of descriptors, accept()
    fails and every client is locked out, not only the newest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.debug("could not raise the open file limit from %d", soft)
    reserve = max(64, soft // 8)
    cap = min(wanted, max(1, soft - reserve))
    if cap < wanted:
        logger.info("max_connections %d lowered to %d (open file limit %d)", wanted, cap, soft)
    return cap


def _write_port_file(path: str, port: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)  # readers never see a half-written file


def _join_workers(timeout_s: float) -> list[str]:
    """Wait briefly for worker threads (their executors were shut down); name the stuck ones."""
    deadline = time.monotonic() + timeout_s
    me = threading.current_thread()
    for t in threading.enumerate():
        if t is not me and not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]


def run(
    settings: ServeSettings,
    on_listening: Callable[[Runtime, int], Coroutine[Any, Any, None]] | None = None,
) -> int:
    import uvloop

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    code = runner.run(serve(settings, on_listening))
    stuck = _join_workers(timeout_s=1.0)
    if stuck:
        # Model code still running after the grace period (or a load cut short) would block
        # the interpreter's exit, which joins worker threads: leave now, with our exit code.
        logger.warning("exiting with model code still running in: %s", ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    runner.close()
    return code

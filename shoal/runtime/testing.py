"""Test helpers: run a real `shoal serve` process on loopback and wait until it is ready.

Used by the runtime's and the examples' tests; usable by anything that needs a live replica."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx


def shoal_command() -> list[str]:
    script = Path(sys.executable).parent / "shoal"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shoal.cli"]


def run_shoal(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """`shoal ARGS` to completion (a command expected to exit), output captured as text."""
    return subprocess.run(
        [*shoal_command(), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class ServeProcess:
    """`shoal serve ARGS --host 127.0.0.1 --port 0` in a subprocess; `url` once ready."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        wait_ready: bool = True,
        ready_timeout_s: float = 90.0,
    ) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.host = host
        self.port = port
        self.wait_ready = wait_ready
        self.ready_timeout_s = ready_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="shoal-serve-")
        self.port_file = Path(self._dir.name) / "port"
        self.log_file = Path(self._dir.name) / "log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> ServeProcess:
        cmd = [
            *shoal_command(),
            "serve",
            *self.args,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--port-file",
            str(self.port_file),
        ]
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.port_file.exists():
            self._check_alive("before listening")
            if time.monotonic() > deadline:
                raise TimeoutError(f"shoal serve did not listen in time:\n{self.logs()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.url = f"http://{self.host}:{self.port}"
        if self.wait_ready:
            self.await_ready(deadline)
        return self

    def await_ready(self, deadline: float) -> None:
        with httpx.Client(timeout=5.0) as client:
            while True:
                self._check_alive("before ready")
                try:
                    if client.get(f"{self.url}/v2/health/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"shoal serve was not ready in time:\n{self.logs()}")
                time.sleep(0.05)

    def _check_alive(self, when: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"shoal serve exited with {self.proc.returncode} {when}:\n{self.logs()}"
            )

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        """Stop the process (if running) and remove its temporary files."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> ServeProcess:
        try:
            return self.start()
        except BaseException:
            self.close()  # a server that never got ready must not outlive the test
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def batch_stats(metrics: str, model: str) -> tuple[float, float]:
    """(batches run, rows in them) of `model`, from /metrics text."""
    count = re.search(rf'^shoal_batch_size_count\{{model="{model}"\}} (\S+)$', metrics, re.M)
    total = re.search(rf'^shoal_batch_size_sum\{{model="{model}"\}} (\S+)$', metrics, re.M)
    assert count is not None, f"no shoal_batch_size for {model!r} in /metrics"
    assert total is not None, f"no shoal_batch_size for {model!r} in /metrics"
    return float(count.group(1)), float(total.group(1))


# MLflow 3 keeps the file store (no server, no network) behind the first switch.
MLFLOW_OFFLINE = {"MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[None]:
    """MLflow in this process pointed at the local store `uri` for the block; the environment
    (MLflow's `set_tracking_uri` exports MLFLOW_TRACKING_URI) and its URIs are put back after."""
    import mlflow

    keys = [*MLFLOW_OFFLINE, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"]
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(MLFLOW_OFFLINE)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

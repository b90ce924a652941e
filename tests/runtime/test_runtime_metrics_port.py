"""`shoal serve --metrics-port`: a second listener that serves GET /metrics and nothing else
(what a NetworkPolicy opens to a Prometheus), reading the same registry as the main port,
which keeps /metrics too. Real `shoal serve` processes on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.runtime.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServeProcess, str]]:
    with ServeProcess("adder=examples.adder:Adder", "--metrics-port", "0", cwd=ROOT) as proc:
        found = re.search(r"shoal metrics on (http://[\d.]+:\d+)/metrics", proc.logs())
        assert found, f"no metrics address in the log:\n{proc.logs()}"
        yield proc, found.group(1)


def _adder_requests(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("shoal_requests_total{") and 'model="adder"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_metrics_port_serves_the_same_metrics_as_the_main_port(
    server: tuple[ServeProcess, str],
) -> None:
    proc, metrics_url = server
    assert metrics_url != proc.url
    with httpx.Client(timeout=10.0) as client:
        before = _adder_requests(client.get(f"{metrics_url}/metrics").text)
        for _ in range(3):
            r = client.post(f"{proc.url}/v1/models/adder:predict", json={"instances": [1.0]})
            assert r.status_code == 200, r.text
        scraped = client.get(f"{metrics_url}/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert _adder_requests(scraped.text) == before + 3
        assert client.get(f"{proc.url}/metrics").status_code == 200  # still on the main port


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/adder:predict"),
        ("POST", "/v2/models/adder/infer"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/adder"),
        ("GET", "/"),
    ],
)
def test_the_metrics_port_serves_nothing_else(
    server: tuple[ServeProcess, str], method: str, path: str
) -> None:
    proc, metrics_url = server
    with httpx.Client(timeout=10.0) as client:
        before = _adder_requests(client.get(f"{metrics_url}/metrics").text)
        r = client.request(method, f"{metrics_url}{path}", json={"instances": [1.0]})
        assert r.status_code == 404, r.text
        assert "metrics port" in r.json()["error"]
        # the model never saw it: the main port's count is unchanged
        assert _adder_requests(client.get(f"{proc.url}/metrics").text) == before


def test_the_metrics_port_takes_only_get(server: tuple[ServeProcess, str]) -> None:
    _, metrics_url = server
    with httpx.Client(timeout=10.0) as client:
        r = client.post(f"{metrics_url}/metrics", content=b"x")
        assert r.status_code == 405
        assert "GET" in r.json()["error"]

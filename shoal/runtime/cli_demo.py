"""`shoal demo [--once]`: serve the embedded default model (a seeded, batched torch MLP) on a
free loopback port through the same code path as `shoal serve`, ask it once over KServe V1 and
once over OIP V2, print the answers, then keep serving until Ctrl-C (`--once`: exit 0)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from shoal import logs
from shoal.runtime.lifecycle import Runtime
from shoal.runtime.loading import DEFAULT_MODEL_TARGET, ModelSpec
from shoal.runtime.settings import ServeSettings

logger = logging.getLogger(__name__)

MODEL = "default"
ROW = [round(0.01 * i, 2) for i in range(64)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="exit 0 after the two answers")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="bind port (default: a free one)")
    parser.add_argument("--log-level", default="WARNING")


def _show(title: str, body: object) -> None:
    text = json.dumps(body)
    print(f"{title}\n  {text[:600]}{' ...' if len(text) > 600 else ''}", flush=True)


def run(args: argparse.Namespace) -> int:
    logs.configure("text", args.log_level)
    settings = ServeSettings(
        models=[ModelSpec(name=MODEL, target=DEFAULT_MODEL_TARGET)],
        host=args.host,
        port=args.port,
        grace_period_s=5.0,
        drain_quiet_s=0.0,
    )

    async def ask(runtime: Runtime, port: int) -> None:
        import httpx

        await runtime.loaded.wait()
        url = f"http://{args.host}:{port}"
        v1_body = {"instances": [ROW]}
        v2_body = {
            "inputs": [{"name": "input0", "shape": [1, 64], "datatype": "FP32", "data": ROW}]
        }
        print(f"shoal demo: serving the embedded MLP as model {MODEL!r} on {url}", flush=True)
        async with httpx.AsyncClient(timeout=30) as client:
            v1 = await client.post(f"{url}/v1/models/{MODEL}:predict", json=v1_body)
            v2 = await client.post(f"{url}/v2/models/{MODEL}/infer", json=v2_body)
        _show(f"KServe V1  POST /v1/models/{MODEL}:predict -> {v1.status_code}", v1.json())
        _show(f"OIP V2     POST /v2/models/{MODEL}/infer -> {v2.status_code}", v2.json())
        if v1.status_code != 200 or v2.status_code != 200:
            runtime.exit_code = 1
            runtime.request_exit()
            return
        if args.once:
            runtime.request_exit()
            return
        row = json.dumps(ROW)
        print(
            "\nStill serving; try (Ctrl-C to stop):\n"
            f"  curl -s {url}/v1/models/{MODEL}:predict -d '{{\"instances\": [{row}]}}'\n"
            f"  curl -s {url}/v2/models/{MODEL}/infer -d '{json.dumps(v2_body)}'\n"
            f"  curl -s {url}/v2/health/ready\n"
            f"  curl -s {url}/metrics",
            flush=True,
        )

    from shoal.runtime.uvicorn_runner import run as serve_run

    try:
        return serve_run(settings, ask)
    except OSError as exc:  # the port is taken (BindError names the address)
        print(f"shoal demo: error: {exc}", file=sys.stderr)
        return 2

"""Model ingress apps mounted beside the standard routes (in-process ASGI, no sockets):
an `app` class attribute and an `ingress()` builder, prefix and root mounting, and drain."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI, Request

import shoal
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.server import ShoalApp


class WithAppAttribute:
    app = FastAPI()

    def __init__(self) -> None:
        self.greeting = "hello"

    @shoal.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    async def __call__(self, rows: list[Any]) -> list[Any]:
        return [f"{self.greeting} {r}" for r in rows]


@WithAppAttribute.app.get("/greet/{who}")
async def greet(who: str, request: Request) -> dict[str, Any]:
    model = request.app.state.model  # set by the runtime
    return {"answer": await model(who), "root_path": request.scope.get("root_path", "")}


class WithBuilder:
    def ingress(self) -> FastAPI:
        app = FastAPI()

        @app.get("/ping")
        async def ping() -> dict[str, str]:
            return {"pong": type(self).__name__}

        return app

    async def __call__(self, row: Any) -> Any:
        return row


async def app_with(*models: tuple[str, object]) -> tuple[ShoalApp, DataPlane]:
    plane = DataPlane([name for name, _ in models])
    for name, obj in models:
        served = ServedModel(name, obj)
        await served.start()
        plane.add(served)
    plane.loaded = True
    return ShoalApp(plane, RuntimeMetrics()), plane


def client(app: ShoalApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shoal")


async def test_app_attribute_under_the_model_prefix_and_at_root() -> None:
    app, _ = await app_with(("greeter", WithAppAttribute()))
    async with client(app) as c:
        r = await c.get("/greeter/greet/ann")
        assert r.json() == {"answer": "hello ann", "root_path": "/greeter"}
        r = await c.get("/greet/bob")  # the only ingress: also at root paths not taken
        assert r.json()["answer"] == "hello bob"
        r = await c.post("/v1/models/greeter:predict", json={"instances": ["cy"]})
        assert r.json() == {"predictions": ["hello cy"]}  # standard routes still there


async def test_two_ingress_apps_only_under_their_prefixes() -> None:
    app, _ = await app_with(("greeter", WithAppAttribute()), ("pinger", WithBuilder()))
    async with client(app) as c:
        assert (await c.get("/pinger/ping")).json() == {"pong": "WithBuilder"}
        assert (await c.get("/greeter/greet/x")).status_code == 200
        r = await c.get("/ping")  # ambiguous at root: not routed
        assert r.status_code == 404
        assert "no route GET /ping" in r.json()["error"]


async def test_ingress_requests_get_503_draining() -> None:
    app, plane = await app_with(("pinger", WithBuilder()))
    plane.draining = True
    async with client(app) as c:
        r = await c.get("/pinger/ping")
        assert r.status_code == 503
        assert r.headers["x-shoal-draining"] == "1"
        assert r.headers["connection"] == "close"

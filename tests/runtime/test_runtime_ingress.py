"""Model ingress apps mounted beside the standard routes (in-process ASGI, no sockets):
an `app` class attribute and an `ingress()` builder, prefix and root mounting, and drain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

import shoal
from shoal.runtime.dataplane import DataPlane
from shoal.runtime.ingress import IngressError, check_servable, find_ingress
from shoal.runtime.metrics import RuntimeMetrics
from shoal.runtime.model import ServedModel
from shoal.runtime.server import ShoalApp
from shoal.runtime.testing import run_shoal

ROOT = Path(__file__).resolve().parents[2]


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


class Body(BaseModel):
    x: float


class RayStyle:
    """Ray Serve's `@serve.ingress(app)` shape: the routes are the methods."""

    app = FastAPI()

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    @app.post("/predict")
    async def predict(self, body: Body) -> dict[str, float]:
        return {"y": body.x * self.factor, "batched": await self(body.x)}

    @app.get("/factor/{digits}")
    def factor_as_text(self, digits: int) -> dict[str, str]:  # sync: FastAPI's thread pool
        return {"factor": f"{self.factor:.{digits}f}"}

    @shoal.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    async def __call__(self, rows: list[float]) -> list[float]:
        return [r + 1 for r in rows]


module_app = FastAPI()


class RoutesOfAnUnnamedApp:
    """Ray's shape without `@serve.ingress(module_app)`: nothing tells Shoal about the app."""

    @module_app.post("/predict")
    async def predict(self, body: Body) -> dict[str, float]:
        return {"y": body.x}

    async def __call__(self, row: Any) -> Any:
        return row


class RoutesOnly:
    app = FastAPI()

    @app.get("/hi")
    async def hi(self) -> dict[str, int]:
        return {"hi": 1}


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


async def test_route_methods_are_bound_to_the_model_the_ray_way() -> None:
    app, _ = await app_with(("ray-style", RayStyle(factor=3.0)))
    async with client(app) as c:
        r = await c.post("/ray-style/predict", json={"x": 2})
        assert r.status_code == 200, r.text  # was 422: `self` read as a query parameter
        assert r.json() == {"y": 6.0, "batched": 3.0}
        r = await c.get("/ray-style/factor/2")
        assert r.json() == {"factor": "3.00"}
        r = await c.post("/ray-style/predict", json={"x": "not a number"})
        assert r.status_code == 422  # FastAPI's own validation still runs
        assert r.json()["detail"][0]["loc"] == ["body", "x"]


async def test_a_second_instance_takes_the_shared_app_routes() -> None:
    await app_with(("first", RayStyle(factor=3.0)))
    app, _ = await app_with(("second", RayStyle(factor=5.0)))
    async with client(app) as c:
        assert (await c.post("/second/predict", json={"x": 1})).json()["y"] == 5.0


def test_routes_of_an_app_the_class_does_not_name_are_refused_with_the_fix() -> None:
    with pytest.raises(IngressError, match=r"write `app = module_app` in the class body"):
        find_ingress(RoutesOfAnUnnamedApp())


def test_routes_and_nothing_to_predict_with_is_refused_with_the_fix() -> None:
    with pytest.raises(IngressError, match=r"has HTTP routes but no __call__ or predict"):
        check_servable(RoutesOnly())
    check_servable(RayStyle())  # has __call__


def test_shoal_serve_says_so_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    done = run_shoal("serve", "tests/runtime/test_runtime_ingress.py:RoutesOnly", cwd=ROOT)
    assert done.returncode == 1
    assert "RoutesOnly has HTTP routes but no __call__ or predict" in done.stderr
    assert "Traceback" not in done.stderr
    assert "AttributeError" not in done.stderr


async def test_ingress_requests_are_counted_with_the_route_template() -> None:
    app, _ = await app_with(("greeter", WithAppAttribute()))
    async with client(app) as c:
        for who in ("ann", "bob", "cy"):
            assert (await c.get(f"/greeter/greet/{who}")).status_code == 200
        assert (await c.get("/greeter/nowhere")).status_code == 404
    text = app.metrics.render().decode()
    assert (
        'shoal_requests_total{code="200",model="greeter",protocol="ingress",'
        'route="/greeter/greet/{who}"} 3.0'
    ) in text
    assert (
        'shoal_request_duration_seconds_count{code="200",model="greeter",protocol="ingress",'
        'route="/greeter/greet/{who}"} 3.0'
    ) in text
    assert 'route="/greeter/{unmatched}"} 1.0' in text
    assert "/greet/ann" not in text  # never the raw path


async def test_the_ray_way_snippet_of_the_runtime_readme() -> None:
    text = (ROOT / "shoal" / "runtime" / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "Scaler" in b]
    namespace: dict[str, Any] = {"__name__": "runtime_readme"}
    exec(compile(code, "shoal/runtime/README.md", "exec"), namespace)
    app, _ = await app_with(("scaler", namespace["Scaler"](factor=3.0)))
    async with client(app) as c:
        r = await c.post("/scaler/predict", json={"x": 2})
    assert r.json() == {"y": 6.0}

"""A model's own HTTP routes: the FastAPI (or any ASGI) app the runtime mounts under
`/{model}/...` beside the standard protocol routes.

Three shapes are found at load:
- an `ingress(self)` method that builds the app (its routes close over `self`);
- an `app` attribute (we set `app.state.model = obj`);
- Ray Serve's shape, routes declared on methods (`@app.post("/predict")` over
  `async def predict(self, body)`, the app named in the class body or as an `app` attribute).
  FastAPI would see `self` as a query parameter (422 `loc: ["query", "self"]`); the runtime
  rebuilds each such route on the instance's bound method, so `self` is the loaded model.

A class whose methods are routes of an app it does not name, or that has routes and nothing to
predict with, is refused at load with a message that says what to write."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from shoal.runtime.loading import LoadError

ASGIApp = Callable[..., Any]


class IngressError(LoadError):
    """The model's routes cannot be served as written; the message says what to write."""


def find_ingress(obj: object) -> ASGIApp | None:
    """A model's own ASGI app (FastAPI or any ASGI callable): an `ingress()` method that builds
    it (it can close over `self`), or an `app` attribute (we set `app.state.model = obj`)."""
    build = getattr(obj, "ingress", None)
    app = build() if callable(build) and not _is_asgi_app(build) else getattr(obj, "app", None)
    if app is None:
        _refuse_unattached_routes(obj)
        return None
    bind_route_methods(app, obj)
    state = getattr(app, "state", None)
    if state is not None:
        state.model = obj
    return app  # type: ignore[no-any-return]


def _is_asgi_app(obj: object) -> bool:
    return hasattr(obj, "router") or hasattr(obj, "routes")


def _class_functions(obj: object) -> dict[Callable[..., Any], str]:
    """The plain functions defined on the model's class (and its bases), by function."""
    found: dict[Callable[..., Any], str] = {}
    for klass in reversed(type(obj).__mro__):
        for name, value in vars(klass).items():
            if inspect.isfunction(value):
                found[value] = name
    return found


def bind_route_methods(app: object, obj: object) -> int:
    """Rebuild every route of `app` whose endpoint is a method of `obj`'s class on the bound
    method, in place (the order of routes, which decides matching, is kept). Returns how many.

    The new route is made by the route's own class from the options the old one keeps under
    the names of its constructor's parameters (response model, status code, dependencies...),
    so FastAPI analyses the bound method's signature, which has no `self`."""
    routes = getattr(getattr(app, "router", None), "routes", None)
    if not routes:
        return 0
    methods = _class_functions(obj)
    bound = 0
    for index, route in enumerate(list(routes)):
        endpoint = getattr(route, "endpoint", None)
        # a method bound to an earlier instance (an `app` class attribute is shared by every
        # instance of the class): the newest instance takes the routes, as it takes app.state
        name = methods.get(getattr(endpoint, "__func__", endpoint))  # type: ignore[arg-type]
        if name is None:
            continue
        routes[index] = _rebuilt(route, getattr(obj, name))
        bound += 1
    if bound and hasattr(app, "openapi_schema"):
        app.openapi_schema = None  # built again, from the rebuilt routes
    return bound


def _rebuilt(route: Any, endpoint: Callable[..., Any]) -> Any:
    params = inspect.signature(type(route).__init__).parameters
    options = {
        name: getattr(route, name)
        for name, param in params.items()
        if name not in ("self", "path", "endpoint")
        and param.kind is not inspect.Parameter.VAR_KEYWORD
        and hasattr(route, name)
    }
    return type(route)(route.path, endpoint, **options)


def _refuse_unattached_routes(obj: object) -> None:
    """Ray's `@serve.ingress(app)` over a class whose methods carry `@app.post(...)`: without
    the decorator nothing tells Shoal about `app`, and the routes would silently not exist."""
    module = sys.modules.get(type(obj).__module__)
    if module is None:
        return
    methods = _class_functions(obj)
    for var, value in vars(module).items():
        routes = getattr(getattr(value, "router", None), "routes", None) or []
        owned = [r for r in routes if getattr(r, "endpoint", None) in methods]
        if owned:
            cls = type(obj).__name__
            raise IngressError(
                f"{cls}'s methods are routes of the app {var!r} of module {module.__name__}, "
                f"but {cls} does not name it; write `app = {var}` in the class body (Ray's "
                f"@serve.ingress({var})), or build the app in `def ingress(self)`"
            )


def has_entry_point(obj: object) -> bool:
    """Whether the model has something to predict with (`__call__` or `predict`)."""
    if inspect.isroutine(obj):
        return True
    cls = type(obj)
    return any("__call__" in vars(k) for k in cls.__mro__ if k is not object) or callable(
        getattr(obj, "predict", None)
    )


def check_servable(obj: object) -> None:
    """Refuse, saying what to write, a model with nothing to predict with (before the data
    plane looks for its entry point)."""
    if has_entry_point(obj):
        return
    cls = type(obj).__name__
    if getattr(obj, "app", None) is not None or callable(getattr(obj, "ingress", None)):
        raise IngressError(
            f"{cls} has HTTP routes but no __call__ or predict: Shoal serves a model's own "
            f"routes beside its V1/V2 inference, which calls the model; add `async def "
            f"__call__(self, row)` (the routes can `await self(row)` to share its batching)"
        )
    raise IngressError(f"{cls} has no __call__ or predict method to serve")

"""A model's own HTTP routes: the FastAPI (or any ASGI) app the runtime mounts under
`/{model}/...` beside the standard protocol routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ASGIApp = Callable[..., Any]


def find_ingress(obj: object) -> ASGIApp | None:
    """A model's own ASGI app (FastAPI or any ASGI callable): an `ingress()` method that builds
    it (it can close over `self`), or an `app` attribute (we set `app.state.model = obj`)."""
    build = getattr(obj, "ingress", None)
    app = build() if callable(build) and not _is_asgi_app(build) else getattr(obj, "app", None)
    if app is None:
        return None
    state = getattr(app, "state", None)
    if state is not None:
        state.model = obj
    return app  # type: ignore[no-any-return]


def _is_asgi_app(obj: object) -> bool:
    return hasattr(obj, "router") or hasattr(obj, "routes")

"""`shoal.handle("name")`: call another model from inside a model.

In-process when this process serves that model (no HTTP, same batcher), else over HTTP to
`SHOAL_GATEWAY_URL` (`POST /v1/models/{name}:predict`). Either way the caller's remaining
deadline travels along (`x-shoal-timeout-ms`), and calls are plain coroutines, so
`await asyncio.gather(h1(x), h2(x))` runs them in parallel.
"""

from __future__ import annotations

import asyncio
import os
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson

from shoal.runtime.errors import DeadlineExceeded, ModelNotFound, ShoalError

if TYPE_CHECKING:
    import httpx

    from shoal.runtime.model import ServedModel

current_deadline: ContextVar[float | None] = ContextVar("shoal_deadline", default=None)
"""The deadline (event-loop time) of the request being served; set by the server per request."""

DEFAULT_TIMEOUT_S = 30.0
_local: dict[str, ServedModel] = {}


def register_local(model: ServedModel) -> None:
    _local[model.name] = model


def unregister_local(name: str) -> None:
    _local.pop(name, None)


class RemoteError(ShoalError):
    """The other model answered with an error; its status is kept."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handle:
    def __init__(self, name: str, gateway_url: str | None = None) -> None:
        self.name = name
        self._gateway_url = gateway_url
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"shoal.handle({self.name!r})"

    async def __call__(self, value: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = current_deadline.get()
        if deadline is None:
            deadline = loop.time() + DEFAULT_TIMEOUT_S
        model = _local.get(self.name)
        if model is not None:
            return (await model.infer([value], deadline))[0]
        return await self._remote(value, deadline - loop.time())

    async def _remote(self, value: Any, budget_s: float) -> Any:
        import httpx

        base = self._gateway_url or os.environ.get("SHOAL_GATEWAY_URL")
        if not base:
            raise ModelNotFound(
                f"model {self.name!r} is not served by this process "
                "and SHOAL_GATEWAY_URL is not set"
            )
        if budget_s <= 0:
            raise DeadlineExceeded(f"no time left to call model {self.name!r}")
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient()
            self._client_loop = loop
        try:
            response = await self._client.post(
                f"{base.rstrip('/')}/v1/models/{self.name}:predict",
                content=orjson.dumps({"instances": [value]}, option=orjson.OPT_SERIALIZE_NUMPY),
                headers={
                    "content-type": "application/json",
                    "x-shoal-timeout-ms": str(int(budget_s * 1000)),
                },
                timeout=budget_s + 1.0,  # the callee answers 504 first; this is a backstop
            )
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"model {self.name!r} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise RemoteError(502, f"model {self.name!r}: {type(exc).__name__}: {exc}") from None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        if response.status_code != 200:
            message = body.get("error") if isinstance(body, dict) else None
            raise RemoteError(
                response.status_code, f"model {self.name!r}: {message or response.reason_phrase}"
            )
        return body["predictions"][0]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def handle(name: str, gateway_url: str | None = None) -> Handle:
    """An async callable for model `name`: `result = await handle("iris")(row)`."""
    return Handle(name, gateway_url)

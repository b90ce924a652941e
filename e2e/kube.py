"""A minimal asyncio Kubernetes REST client for the harness (httpx, client-certificate auth).

The harness talks to the API server only for what a kubelet does: nodes, leases, pods and their
status, the ConfigMaps/Secrets/tokens that pods consume. Keeping it to raw REST avoids pulling an
operator-side client library into the harness.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from e2e.pki import Pki

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status


def ssl_context(pki: Pki, user: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
    ctx.load_cert_chain(str(pki.client_crt(user)), str(pki.client_key(user)))
    return ctx


class Kube:
    def __init__(self, api_url: str, pki: Pki, user: str = "admin") -> None:
        self._client = httpx.AsyncClient(
            base_url=api_url,
            verify=ssl_context(pki, user),
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        ok_missing: bool = False,
    ) -> Obj | None:
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if body is not None else {}
        resp = await self._client.request(
            method, path, content=content, params=params, headers=headers
        )
        if resp.status_code == 404 and ok_missing:
            return None
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, resp.text, f"{method} {path}")
        if not resp.content:
            return {}
        result: Obj = resp.json()
        return result

    async def get(self, path: str, params: dict[str, str] | None = None) -> Obj | None:
        return await self.request("GET", path, params=params, ok_missing=True)

    async def create(self, path: str, body: Obj) -> Obj:
        out = await self.request("POST", path, body=body)
        assert out is not None
        return out

    async def merge_patch(self, path: str, body: Obj) -> Obj | None:
        return await self.request(
            "PATCH", path, body=body, content_type="application/merge-patch+json", ok_missing=True
        )

    async def delete(self, path: str, body: Obj | None = None) -> Obj | None:
        return await self.request("DELETE", path, body=body, ok_missing=True)

    async def watch(
        self, path: str, params: dict[str, str], resource_version: str
    ) -> AsyncIterator[Obj]:
        """Yields watch events until the server ends the stream (the caller re-lists)."""
        query = {
            **params,
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "240",
        }
        timeout = httpx.Timeout(300.0, connect=5.0)
        async with self._client.stream("GET", path, params=query, timeout=timeout) as resp:
            if resp.status_code >= 400:
                body = (await resp.aread()).decode(errors="replace")
                raise ApiError(resp.status_code, body, f"WATCH {path}")
            async for line in resp.aiter_lines():
                if line.strip():
                    event: Obj = json.loads(line)
                    yield event

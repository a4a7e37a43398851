"""ASGI middleware: API key (401, before routing and body parsing), request body size limit (413),
request timing (Server-Timing header), metrics."""

from __future__ import annotations

import json
import secrets
import time

from fastapi import HTTPException

from chunkcache.api.metrics import ApiMetrics
from chunkcache.api.openai_errors import error_bytes, is_openai


def _error(scope, status: int, detail: str, field: str | None) -> bytes:  # type: ignore[no-untyped-def]
    """An error body: {"detail", "field"}, or OpenAI's error object under /v1/ (api/openai_errors.py)."""
    if is_openai(scope.get("path", "")):
        return error_bytes(status, detail, field)
    return json.dumps({"detail": detail, "field": field}).encode()


class ServingMiddleware:
    """Refuses bodies over max_body_bytes (by Content-Length, or while streaming in), stamps
    `server-timing: app;dur=<ms>` (arrival to response start) and counts the request by route."""

    def __init__(self, app, max_body_bytes: int, metrics: ApiMetrics) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.max_body = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = f"body: request body exceeds the limit of {self.max_body} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            body = _error(scope, 413, too_big, "body")
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            self._count(scope, 413, t0)
            return
        seen = 0

        async def limited_receive():  # type: ignore[no-untyped-def]
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, too_big)
            return message

        async def timed_send(message) -> None:  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1e3
                message["headers"] = [*message.get("headers", []), (b"server-timing", f"app;dur={ms:.3f}".encode())]
                self._count(scope, message["status"], t0)
            await send(message)

        await self.app(scope, limited_receive, timed_send)

    def _count(self, scope, status: int, t0: float) -> None:  # type: ignore[no-untyped-def]
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


class ApiKeyMiddleware:
    """With an API key, every path but `open_paths` needs `Authorization: Bearer <key>`, the OpenAPI
    schema and the docs pages included. Checked before routing, so a request without a valid token
    gets 401 whatever its body (FastAPI would parse and validate the body before a dependency)."""

    def __init__(self, app, api_key: str | None,  # type: ignore[no-untyped-def]
                 open_paths: tuple[str, ...] = ("/healthz",)) -> None:
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or self.key is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        scheme, _, token = dict(scope.get("headers") or []).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        body = _error(scope, 401, "authorization: a valid bearer token is required", None)
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})

"""The HTTP face: ``create_app(service)`` builds the ASGI app.

Two parts, one in front of the other:

- the **ingress** (``ingress.py``), a plain ASGI callable that takes every request carrying
  rows (``/v1/predict``, V2 infer, ``/v1/feedback``) and does limits, authentication,
  admission, parsing and metrics for them once, inline;
- the **control API**, a FastAPI app for everything else (OpenAPI, the control routes grouped
  by resource in ``operations``, ``decisions``, ``rollout``, ``governance``, ``monitoring``,
  ``review`` and ``v2``), behind the access middleware (the role table in ``access.py``) and
  the metrics middleware.

The OpenAPI document describes both; the ingress routes' bodies come from the service's real
contract (``openapi.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipway import __version__
from shipway.api import decisions, governance, monitoring, operations, review, rollout, v2
from shipway.api.access import AccessMiddleware
from shipway.api.errors import error_response, shipway_error_response
from shipway.api.ingress import Ingress
from shipway.api.openapi import ingress_openapi, secure_openapi
from shipway.errors import ShipwayError
from shipway.service import Service

log = logging.getLogger("shipway.api")


class MetricsMiddleware:
    """Counts every control request by route template and status, and times it."""

    def __init__(self, app: ASGIApp, service: Service, static_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = service.metrics
        self.static_paths = static_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope["path"]
            if path not in self.static_paths:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_http(path, status, time.perf_counter() - t0)


_FORMISH = (b"application/x-www-form-urlencoded", b"text/plain", b"")


class JsonBodies:
    """Control routes read their bodies as JSON whatever Content-Type says, as the ingress
    does: ``curl -d '{...}'`` sends a form type, and a body that is JSON should not be refused
    for its label. Only form and plain-text labels (or none) are relabelled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if ctype.split(b";")[0].strip().lower() in _FORMISH:
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


async def _shipway_error(_req: Request, exc: Exception) -> Response:
    assert isinstance(exc, ShipwayError)
    return shipway_error_response(exc)


async def _http_error(_req: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    headers = getattr(exc, "headers", None)
    return error_response({"code": code, "message": str(exc.detail)}, exc.status_code, headers)


async def _validation_error(_req: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = [
        {"field": ".".join(str(p) for p in e["loc"]), "rule": e["type"], "message": e["msg"]}
        for e in exc.errors()
    ]
    body = {
        "code": "bad_request",
        "message": "the request does not fit this route",
        "fields": fields,
    }
    return error_response(body, 400)


async def _unexpected(_req: Request, exc: Exception) -> Response:
    log.error("unexpected error", exc_info=exc)
    body = {
        "code": "internal_error",
        "message": f"unexpected {type(exc).__name__}; see the server log",
    }
    return error_response(body, 500)


def create_app(service: Service, *, manage_lifecycle: bool = True) -> ASGIApp:
    """The service's ASGI app. With ``manage_lifecycle`` the app starts the service when the
    server starts and, when it stops, drains shadow work and stops it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            service.loop = asyncio.get_running_loop()
            service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await service.drain()
                service.stop()

    app = FastAPI(
        title=f"Shipway: {service.name}",
        version=__version__,
        description=service.manifest.service.description
        or "Predictions validated against the service's data contract and logged.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(ShipwayError, _shipway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    for module in (operations, decisions, rollout, governance, monitoring, review, v2):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            ingress_openapi(schema, service.manifest)
            secure_openapi(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    static = frozenset(p for r in app.router.routes if "{" not in (p := getattr(r, "path", "{")))
    app.add_middleware(JsonBodies)
    app.add_middleware(AccessMiddleware, service=service)
    app.add_middleware(MetricsMiddleware, service=service, static_paths=static)
    return Ingress(app, service)


__all__ = ["create_app"]

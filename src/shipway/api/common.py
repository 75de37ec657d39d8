"""What every control route needs: its service, the caller as an actor, a JSON response."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.access import principal_of
from shipway.service import Service

JSON = "application/json"


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def actor_of(request: Request) -> str:
    """Who is acting, for the audit log: the principal (in development mode, the
    ``X-Shipway-Actor`` header or "development")."""
    p = principal_of(request)
    if p.kind == "dev":
        return "dev:" + (request.headers.get("x-shipway-actor") or "development")
    return p.actor


__all__ = ["JSON", "actor_of", "json_response", "service_of"]

"""Who may call which route: one table, enforced by one middleware, printed in the docs.

Every route but the operational ones needs credentials. The table maps (method, path) to the
permissions that allow it (any one is enough); ``OPEN`` routes need none, and a route missing
from the table needs ``admin`` (fail closed). Some routes ask for
more inside the handler: a rollout ``promote`` or a ``force`` needs ``approve``, and decisions
come without their inputs unless the caller may ``read_inputs``.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from shipway.api.errors import shipway_error_response
from shipway.errors import Forbidden, ShipwayError
from shipway.govern.roles import (
    ADMIN,
    ANONYMOUS,
    APPROVE,
    DEV,
    INGEST,
    LABEL,
    OPERATE,
    PREDICT,
    READ,
    REVIEW,
    ROLES,
    Principal,
)

OPEN = "open"
OPERATIONS = "operations"  # open unless auth.protect_operations, then read

ROUTE_PERMISSIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("GET", "/healthz", (OPERATIONS,)),
    ("GET", "/readyz", (OPERATIONS,)),
    ("GET", "/metrics", (OPERATIONS,)),
    ("GET", "/openapi.json", (OPEN,)),
    ("GET", "/docs", (OPEN,)),
    ("GET", "/docs/oauth2-redirect", (OPEN,)),
    ("GET", "/redoc", (OPEN,)),
    ("POST", "/v1/predict", (PREDICT,)),
    ("GET", "/v1/decisions/{decision_id}", (READ, PREDICT)),
    ("GET", "/v1/service", (READ,)),
    ("GET", "/v1/models", (READ,)),
    ("GET", "/v1/rollout", (READ,)),
    ("GET", "/v1/rollout/history", (READ,)),
    ("POST", "/v1/rollout/{move}", (OPERATE,)),
    ("GET", "/v1/audit", (READ,)),
    ("GET", "/v1/audit/verify", (READ,)),
    ("GET", "/v1/keys", (ADMIN,)),
    ("POST", "/v1/keys", (ADMIN,)),
    ("DELETE", "/v1/keys/{key_id}", (ADMIN,)),
    ("POST", "/v1/keys/{key_id}/rotate", (ADMIN,)),
    ("POST", "/v1/stop", (APPROVE,)),
    ("POST", "/v1/resume", (APPROVE,)),
    ("POST", "/v1/retention/purge", (OPERATE,)),
    ("POST", "/v1/feedback", (PREDICT, LABEL)),
    ("GET", "/v1/monitor", (READ,)),
    ("GET", "/v1/monitor/history", (READ,)),
    ("POST", "/v1/monitor/run", (OPERATE,)),
    ("GET", "/v1/alerts", (READ,)),
    ("GET", "/v1/outbox", (READ,)),
    ("GET", "/v1/jobs", (READ,)),
    ("GET", "/v1/sources", (READ,)),
    ("POST", "/v1/retrain", (OPERATE,)),
    ("GET", "/v1/retrain", (READ,)),
    ("GET", "/v1/retrain/{job_id}", (READ,)),
    ("POST", "/v1/ingest/{source}", (INGEST,)),
    ("GET", "/v1/review/next", (REVIEW,)),
    ("GET", "/v1/review/stats", (READ,)),
    ("GET", "/v1/review/{item_id}", (REVIEW,)),
    ("POST", "/v1/review/{item_id}", (REVIEW,)),
    ("GET", "/v1/review/{item_id}/explain", (REVIEW,)),
    ("GET", "/v2", (PREDICT, READ)),
    ("GET", "/v2/health/live", (PREDICT, READ)),
    ("GET", "/v2/health/ready", (PREDICT, READ)),
    ("GET", "/v2/models/{model}", (PREDICT, READ)),
    ("GET", "/v2/models/{model}/versions/{version}", (PREDICT, READ)),
    ("GET", "/v2/models/{model}/ready", (PREDICT, READ)),
    ("GET", "/v2/models/{model}/versions/{version}/ready", (PREDICT, READ)),
    ("POST", "/v2/models/{model}/infer", (PREDICT,)),
    ("POST", "/v2/models/{model}/versions/{version}/infer", (PREDICT,)),
]


def _compile(path: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", path)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")


_EXACT = {(m, p): perms for m, p, perms in ROUTE_PERMISSIONS if "{" not in p}
_TABLE = [(m, _compile(p), perms) for m, p, perms in ROUTE_PERMISSIONS if "{" in p]


def permissions_for(method: str, path: str) -> tuple[str, ...] | None:
    """The permissions that allow ``method path`` (None: not a known route)."""
    if method == "HEAD":
        method = "GET"
    exact = _EXACT.get((method, path))
    if exact is not None:
        return exact
    for m, rx, perms in _TABLE:
        if m == method and rx.match(path):
            return perms
    return None


def roles_allowed(perms: tuple[str, ...]) -> list[str]:
    if OPEN in perms or OPERATIONS in perms:
        return list(ROLES)
    return [r for r, p in ROLES.items() if p & set(perms)]


def principal_of(scope_or_request: Any) -> Principal:
    state = scope_or_request.get("state") if isinstance(scope_or_request, dict) else None
    if state is None:
        state = getattr(scope_or_request, "scope", {}).get("state", {})
    return state.get("principal", DEV)


def require(principal: Principal, permission: str, what: str) -> None:
    if not principal.can(permission):
        raise Forbidden(
            f"{what} needs the {permission!r} permission "
            f"({', '.join(r for r, p in ROLES.items() if permission in p)}); "
            f"{principal.name} has roles {sorted(principal.roles) or 'none'}"
        )


class AccessMiddleware:
    """Authenticates every request to a protected route and checks its permission."""

    def __init__(self, app: ASGIApp, service: Any) -> None:
        self.app = app
        self.service = service
        self.protect_operations = service.manifest.auth.protect_operations

    def _optional(self, scope: Scope) -> Principal:
        """On an open route: the caller's principal if it sent valid credentials (so the route
        may show it more), else anonymous; bad credentials do not make an open route fail."""
        headers = Headers(scope=scope)
        if "authorization" not in headers and "x-api-key" not in headers:
            return ANONYMOUS
        try:
            return self.service.authenticator.authenticate(headers)
        except ShipwayError:
            return ANONYMOUS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        perms = permissions_for(scope["method"], scope["path"]) or (ADMIN,)  # fail closed
        state = scope.setdefault("state", {})
        if OPEN in perms or (OPERATIONS in perms and not self.protect_operations):
            state["principal"] = DEV if self.service.dev_mode else self._optional(scope)
            await self.app(scope, receive, send)
            return
        if OPERATIONS in perms:
            perms = (READ,)
        if self.service.dev_mode:
            state["principal"] = DEV
            await self.app(scope, receive, send)
            return
        try:
            principal = self.service.authenticator.authenticate(Headers(scope=scope))
            if not any(principal.can(p) for p in perms):
                raise Forbidden(
                    f"{scope['method']} {scope['path']} needs one of the roles "
                    f"{', '.join(roles_allowed(perms))}; {principal.name} has "
                    f"{', '.join(sorted(principal.roles)) or 'no role'}"
                )
        except ShipwayError as exc:
            v2 = scope["path"].startswith("/v2")
            await shipway_error_response(exc, v2)(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)


__all__ = [
    "OPEN",
    "OPERATIONS",
    "ROUTE_PERMISSIONS",
    "AccessMiddleware",
    "permissions_for",
    "principal_of",
    "require",
    "roles_allowed",
]

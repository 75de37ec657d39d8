"""One JSON error body for every failure: ``{"error": {"code", "message", ...}}``.

Domain errors carry a stable code and know nothing of HTTP; this table is the only place that
turns codes into statuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from shipway.errors import ShipwayError

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "invalid_input": 400,
    "not_found": 404,
    "contract_violation": 422,
    "feedback_invalid": 422,
    "expression_invalid": 500,
    "conflict": 409,
    "gate_failed": 409,
    "manifest_invalid": 500,
    "config_error": 500,
    "model_error": 500,
    "artifact_integrity": 500,
    "model_timeout": 504,
    "upstream_error": 502,
    "output_invalid": 502,
    "store_unavailable": 503,
    "unavailable": 503,
    "model_unavailable": 503,
    "overloaded": 503,
    "rate_limited": 429,
    "unauthorized": 401,
    "forbidden": 403,
    "service_stopped": 503,
    "payload_too_large": 413,
    "method_not_allowed": 405,
    "internal_error": 500,
}


def status_for(exc: ShipwayError) -> int:
    return STATUS_BY_CODE.get(exc.code, 500)


def error_headers(exc: ShipwayError) -> dict[str, str]:
    """Retry-After when the error asks for a retry; WWW-Authenticate when it needs credentials."""
    if exc.retry_after is not None:
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if exc.code == "unauthorized":
        return {"WWW-Authenticate": 'Bearer realm="shipway"'}
    return {}


def error_body(exc: ShipwayError, v2: bool = False) -> bytes:
    """Shipway's one error body, or, on the V2 routes, the protocol's (``error`` a string, which
    V2 clients print) with the same stable ``code`` and details beside it."""
    body = exc.to_dict()
    if not v2:
        return orjson.dumps({"error": body})
    code = body.pop("code")
    message = body.pop("message")
    return orjson.dumps({"error": f"{code}: {message}", "code": code, **body})


def shipway_error_response(exc: ShipwayError, v2: bool = False) -> Response:
    """The error body and status for ``exc``, with its headers."""
    return Response(
        error_body(exc, v2),
        status_code=status_for(exc),
        media_type="application/json",
        headers=error_headers(exc) or None,
    )


def error_response(
    error: dict[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": error}),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


__all__ = [
    "STATUS_BY_CODE",
    "error_body",
    "error_headers",
    "error_response",
    "shipway_error_response",
    "status_for",
]

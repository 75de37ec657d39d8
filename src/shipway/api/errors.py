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
}


def status_for(exc: ShipwayError) -> int:
    return STATUS_BY_CODE.get(exc.code, 500)


def shipway_error_response(exc: ShipwayError) -> Response:
    """The error body and status for ``exc``, with Retry-After when it asks for a retry."""
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif exc.code == "unauthorized":
        headers = {"WWW-Authenticate": 'Bearer realm="shipway"'}
    return error_response(exc.to_dict(), status_for(exc), headers)


def error_response(
    error: dict[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": error}),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


__all__ = ["STATUS_BY_CODE", "error_response", "shipway_error_response", "status_for"]

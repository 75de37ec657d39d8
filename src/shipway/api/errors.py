"""One JSON error body for every failure: ``{"error": {"code", "message", ...}}``.

Domain errors carry a stable code and know nothing of HTTP; this table is the only place that
turns codes into statuses.
"""

from __future__ import annotations

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
    "conflict": 409,
    "gate_failed": 409,
    "manifest_invalid": 500,
    "config_error": 500,
    "model_error": 500,
    "artifact_integrity": 500,
    "store_unavailable": 503,
    "unavailable": 503,
}


def status_for(exc: ShipwayError) -> int:
    return STATUS_BY_CODE.get(exc.code, 500)


def error_response(
    error: dict[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": error}),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


__all__ = ["STATUS_BY_CODE", "error_response", "status_for"]

"""Reading the decision log over HTTP."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.access import principal_of
from shipway.api.common import json_response, service_of
from shipway.govern.roles import READ_INPUTS

router = APIRouter()


@router.get("/v1/decisions/{decision_id}", tags=["control"], summary="One logged decision")
async def decision(decision_id: str, request: Request) -> Response:
    d = await run_in_threadpool(service_of(request).decision, decision_id)
    if not principal_of(request).can(READ_INPUTS):
        d.pop("inputs", None)  # viewers see decisions without their inputs
    return json_response(d)


__all__ = ["router"]

"""Models and rollout over HTTP: the CLI's moves, applied to the stored plan."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.access import principal_of, require
from shipway.api.common import actor_of, json_response, service_of
from shipway.api.control import RolloutMove, apply_move, rollout_report
from shipway.govern.roles import APPROVE
from shipway.lifecycle.rollout import approval_needed

router = APIRouter()


@router.get("/v1/models", tags=["models"], summary="Registered versions, roles and metrics")
async def models(request: Request) -> Response:
    return json_response({"models": await run_in_threadpool(service_of(request).models)})


@router.get("/v1/rollout", tags=["rollout"], summary="The plan, canary checks, agreement")
async def rollout_status(request: Request) -> Response:
    return json_response(await run_in_threadpool(rollout_report, service_of(request)))


@router.get("/v1/rollout/history", tags=["rollout"], summary="Every rollout move")
async def rollout_history(request: Request, limit: int = 100) -> Response:
    service = service_of(request)
    return json_response({"events": await run_in_threadpool(service.rollout.history, limit)})


@router.post("/v1/rollout/{move}", tags=["rollout"], summary="Make a rollout move")
async def rollout_move(move: str, body: RolloutMove, request: Request) -> Response:
    service = service_of(request)
    why = await run_in_threadpool(
        approval_needed, service.rollout, move, percent=body.percent, force=body.force
    )
    if why is not None:
        require(principal_of(request), APPROVE, why)
    result = await run_in_threadpool(apply_move, service_of(request), move, body, actor_of(request))
    return json_response(result)


__all__ = ["router"]

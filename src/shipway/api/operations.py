"""Operational routes: liveness, readiness, Prometheus metrics, and the service's description."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.access import principal_of
from shipway.api.common import json_response, service_of
from shipway.govern.roles import READ

router = APIRouter()


@router.get("/healthz", tags=["operations"], summary="The process is up")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", tags=["operations"], summary="Model loaded and store reachable")
async def readyz(request: Request) -> Response:
    """Open to anyone (unless ``auth.protect_operations``): the stop switch's reason is shown
    only to callers with credentials that may read, the rest only whether it is on."""
    state = service_of(request).readiness()
    principal = principal_of(request)
    if state["stopped"] is not None and not principal.can(READ):
        state["stopped"] = True
    return json_response(state, 200 if state["ready"] else 503)


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    service = service_of(request)
    service.breakers()  # refresh the breaker gauges
    return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4")


@router.get("/v1/jobs", tags=["operations"], summary="Scheduled tasks of this server")
async def jobs(request: Request) -> Response:
    """Each periodic task: interval, runs, failures, skips (another replica ran it), last
    success and last error."""
    return json_response({"tasks": service_of(request).scheduler.status()})


@router.get("/v1/service", tags=["control"], summary="What this service is and who answers")
async def describe(request: Request) -> Response:
    return json_response(service_of(request).describe())


__all__ = ["router"]

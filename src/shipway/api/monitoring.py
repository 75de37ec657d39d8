"""Monitoring over HTTP: windows, alerts, and the notifications they sent.

Labels (``POST /v1/feedback``) carry rows, so they come through the ingress.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.access import principal_of
from shipway.api.common import actor_of, json_response, service_of
from shipway.data import ledger
from shipway.errors import NotFound
from shipway.govern.roles import ADMIN
from shipway.lifecycle import training
from shipway.notify import host_of

router = APIRouter()


@router.get("/v1/monitor", tags=["monitoring"], summary="The latest monitor window")
async def monitor_latest(request: Request) -> Response:
    rows = await run_in_threadpool(service_of(request).monitor.latest, 1)
    if not rows:
        raise NotFound("the monitor has not run yet: POST /v1/monitor/run or wait for it")
    return json_response(rows[0])


@router.get("/v1/monitor/history", tags=["monitoring"], summary="Recent monitor windows")
async def monitor_history(request: Request, limit: int = 20) -> Response:
    monitor = service_of(request).monitor
    return json_response({"windows": await run_in_threadpool(monitor.latest, min(limit, 500))})


@router.post("/v1/monitor/run", tags=["monitoring"], summary="Run the monitor on a window now")
async def monitor_run(request: Request) -> Response:
    return json_response(await run_in_threadpool(service_of(request).monitor.run))


@router.post("/v1/retrain", tags=["monitoring"], summary="Start a retrain job", status_code=202)
async def retrain(request: Request) -> Response:
    """A retrain job, started in a process of its own (202 with its record; follow it with
    GET /v1/retrain/{job}). 409 while another retrain of the service is under way."""
    service = service_of(request)
    job = await run_in_threadpool(
        functools.partial(service.retrain, "api", actor_of(request), wait=False)
    )
    return json_response(job, status=202)


@router.get("/v1/retrain", tags=["monitoring"], summary="Retrain jobs, newest first")
async def retrain_jobs(request: Request, limit: int = 20) -> Response:
    service = service_of(request)
    jobs = await run_in_threadpool(
        training.list_jobs, service.store.engine, service.name, min(limit, 500)
    )
    return json_response({"jobs": [{k: v for k, v in j.items() if k != "log"} for j in jobs]})


@router.get("/v1/retrain/{job_id}", tags=["monitoring"], summary="One retrain job")
async def retrain_job(request: Request, job_id: str) -> Response:
    service = service_of(request)
    job = await run_in_threadpool(training.get_job, service.store.engine, job_id)
    if job["service"] != service.name:
        raise NotFound(f"no retrain job {job_id}")
    return json_response(job)


@router.get("/v1/sources", tags=["monitoring"], summary="Data sources: freshness and runs")
async def sources(request: Request, limit: int = 20) -> Response:
    """Per source of the manifest: freshness (and its level), files failed or held in the last
    day, and the newest runs with the files each took."""
    service = service_of(request)

    def read() -> dict[str, Any]:
        now = time.time()
        figures = service.monitor.sources(now - 86400.0, now)
        newest = ledger.runs(service.store.engine, service.name, None, min(limit, 500))
        return {
            "sources": [
                {
                    "name": s.name,
                    **figures[s.name],
                    "runs": [r for r in newest if r["source"] == s.name],
                }
                for s in service.manifest.sources
            ]
        }

    return json_response(await run_in_threadpool(read))


@router.get("/v1/alerts", tags=["monitoring"], summary="Alert firings and resolutions")
async def alerts(request: Request, limit: int = 100) -> Response:
    book = service_of(request).monitor.alerts
    return json_response({"events": await run_in_threadpool(book.events, limit)})


@router.get("/v1/outbox", tags=["monitoring"], summary="Notifications and their delivery")
async def outbox(request: Request, status: str | None = None, limit: int = 100) -> Response:
    """Webhook URLs can hold credentials: below admin only their scheme and host are shown."""
    box = service_of(request).outbox
    msgs = await run_in_threadpool(lambda: box.messages(limit=min(limit, 1000), status=status))
    if not principal_of(request).can(ADMIN):
        for m in msgs:
            m["url"] = host_of(m["url"])
    return json_response({"messages": msgs})


__all__ = ["router"]

"""Human review over HTTP: claim, decide, explain, statistics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.common import actor_of, json_response, service_of
from shipway.api.control import ReviewOutcome

router = APIRouter()


@router.get("/v1/review/next", tags=["review"], summary="Claim the next item to review")
async def review_next(request: Request, queue: str | None = None) -> Response:
    service = service_of(request)
    item = await run_in_threadpool(service.review.claim, actor_of(request), queue)
    if item is None:
        return Response(status_code=204)
    return json_response(item)


@router.get("/v1/review/stats", tags=["review"], summary="Queues, throughput, override rates")
async def review_stats(request: Request) -> Response:
    return json_response(await run_in_threadpool(service_of(request).review.stats))


@router.get("/v1/review/{item_id}", tags=["review"], summary="One review item")
async def review_item(item_id: str, request: Request) -> Response:
    return json_response(await run_in_threadpool(service_of(request).review.get, item_id))


@router.post("/v1/review/{item_id}", tags=["review"], summary="Approve, override or escalate")
async def review_decide(item_id: str, body: ReviewOutcome, request: Request) -> Response:
    queue = service_of(request).review
    actor = actor_of(request)
    item = await run_in_threadpool(
        lambda: queue.decide(item_id, actor, body.action, output=body.output, reason=body.reason)
    )
    return json_response(item)


@router.get("/v1/review/{item_id}/explain", tags=["review"], summary="What pushed the answer")
async def review_explain(item_id: str, request: Request) -> Response:
    return json_response(await run_in_threadpool(service_of(request).explain, item_id))


__all__ = ["router"]

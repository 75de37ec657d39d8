"""The HTTP face: ``create_app(service)`` builds the ASGI app.

FastAPI carries the control routes and the OpenAPI document; the predict route is a plain
Starlette endpoint (no per-request model building) whose schema is written into the OpenAPI
document from the service's real contract.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipway import __version__
from shipway.api.access import AccessMiddleware, principal_of, require
from shipway.api.control import (
    KeyCreate,
    Reason,
    ReviewOutcome,
    RolloutMove,
    apply_move,
    rollout_report,
)
from shipway.api.errors import error_response, shipway_error_response
from shipway.api.openapi import predict_openapi, secure_openapi
from shipway.api.v2 import v2_routes
from shipway.errors import BadRequest, NotFound, PayloadTooLarge, ShipwayError
from shipway.govern import audit
from shipway.govern.keys import Keys
from shipway.govern.retention import purge
from shipway.govern.roles import APPROVE, READ_INPUTS
from shipway.manifest import parse_duration
from shipway.monitor.feedback import record_feedback
from shipway.service import Service

_JSON = "application/json"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


class MetricsMiddleware:
    """Counts every request by route template and status, and times it (pure ASGI, cheap)."""

    def __init__(self, app: ASGIApp, service: Service, static_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = service.metrics
        self.static_paths = static_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope["path"]
            if path not in self.static_paths:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_http(path, status, time.perf_counter() - t0)


def create_app(service: Service, *, manage_lifecycle: bool = True) -> FastAPI:
    max_body = service.manifest.serving.max_body_bytes

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                service.stop()

    app = FastAPI(
        title=f"Shipway: {service.name}",
        version=__version__,
        description=service.manifest.service.description
        or "Predictions validated against the service's data contract and logged.",
        lifespan=lifespan,
    )
    app.state.service = service

    # -- errors: one JSON body everywhere ------------------------------------------------------

    @app.exception_handler(ShipwayError)
    async def _shipway_error(_req: Request, exc: ShipwayError) -> Response:
        return shipway_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = getattr(exc, "headers", None)
        return error_response({"code": code, "message": str(exc.detail)}, exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> Response:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]), "rule": e["type"], "message": e["msg"]}
            for e in exc.errors()
        ]
        return error_response(
            {
                "code": "bad_request",
                "message": "the request does not fit this route",
                "fields": fields,
            },
            400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> Response:
        return error_response(
            {
                "code": "internal_error",
                "message": f"unexpected {type(exc).__name__}; see the server log",
            },
            500,
        )

    # -- the predict path ----------------------------------------------------------------------

    async def predict(request: Request) -> Response:
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            length = 0
        client = request.client.host if request.client is not None else None
        principal = principal_of(request)
        who = principal.key_id or (principal.name if principal.kind == "jwt" else None)
        try:
            if length > max_body:
                raise PayloadTooLarge(f"the body has {length} bytes; the limit is {max_body}")
            service.admit(client, request.headers, who)
        except ShipwayError as exc:
            return shipway_error_response(exc)
        try:
            body = await request.body()
            if len(body) > max_body:
                raise PayloadTooLarge(f"the body has {len(body)} bytes; the limit is {max_body}")
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            caller = (
                request.headers.get("x-shipway-caller") or client
                if principal.kind == "dev"
                else principal.name
            )
            result = await service.predict(payload, caller, request.headers)
        except ShipwayError as exc:
            return shipway_error_response(exc)
        finally:
            service.release()
        return _json(result, 202 if result.get("status") == "pending_review" else 200)

    app.router.routes.append(Route("/v1/predict", predict, methods=["POST"], name="predict"))
    app.router.routes.extend(v2_routes(service))

    # -- health, metrics, control --------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["operations"], summary="Model loaded and store reachable")
    async def readyz() -> Response:
        state = service.readiness()
        return _json(state, 200 if state["ready"] else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        service.breakers()  # refresh the breaker gauges
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/service", tags=["control"], summary="What this service is and who answers")
    async def describe() -> Response:
        return _json(service.describe())

    @app.get("/v1/decisions/{decision_id}", tags=["control"], summary="One logged decision")
    async def decision(decision_id: str, request: Request) -> Response:
        d = await run_in_threadpool(service.decision, decision_id)
        if not principal_of(request).can(READ_INPUTS):
            d.pop("inputs", None)  # viewers see decisions without their inputs
        return _json(d)

    # -- models and rollout (the CLI's moves, over HTTP) ----------------------------------------

    def _actor(request: Request) -> str:
        p = principal_of(request)
        if p.kind == "dev":
            return request.headers.get("x-shipway-actor") or "development"
        return p.name

    @app.get("/v1/models", tags=["models"], summary="Registered versions, roles and metrics")
    async def models() -> Response:
        return _json({"models": await run_in_threadpool(service.models)})

    @app.get("/v1/rollout", tags=["rollout"], summary="The plan, canary checks, agreement")
    async def rollout_status() -> Response:
        return _json(await run_in_threadpool(rollout_report, service))

    @app.get("/v1/rollout/history", tags=["rollout"], summary="Every rollout move")
    async def rollout_history(limit: int = 100) -> Response:
        return _json({"events": await run_in_threadpool(service.rollout.history, limit)})

    @app.post("/v1/rollout/{move}", tags=["rollout"], summary="Make a rollout move")
    async def rollout_move(move: str, body: RolloutMove, request: Request) -> Response:
        if move == "promote" or body.force:
            require(principal_of(request), APPROVE, "promotion or --force")
        result = await run_in_threadpool(apply_move, service, move, body, _actor(request))
        return _json(result)

    # -- governance ----------------------------------------------------------------------------

    @app.get("/v1/audit", tags=["governance"], summary="Audit events, newest first")
    async def audit_list(limit: int = 100, since_seq: int = 0) -> Response:
        rows = await run_in_threadpool(
            audit.events, service.store.engine, since_seq=since_seq, limit=min(limit, 10_000),
            newest_first=True,
        )  # fmt: skip
        return _json({"events": rows})

    @app.get("/v1/audit/verify", tags=["governance"], summary="Check the whole hash chain")
    async def audit_verify() -> Response:
        res = await run_in_threadpool(audit.verify, service.store.engine)
        return _json(res.to_dict(), 200 if res.ok else 409)

    @app.get("/v1/keys", tags=["governance"], summary="API keys, without secrets")
    async def keys_list() -> Response:
        keys = await run_in_threadpool(Keys(service.store.engine).list)
        return _json({"keys": [k.to_dict() for k in keys]})

    @app.post("/v1/keys", tags=["governance"], summary="Create an API key (shown once)")
    async def keys_create(body: KeyCreate, request: Request) -> Response:
        expires = parse_duration(body.expires) if body.expires else None
        info, secret = await run_in_threadpool(
            lambda: Keys(service.store.engine).create(
                name=body.name, role=body.role, actor=_actor(request), expires_in=expires,
                reason=body.reason,
            )
        )  # fmt: skip
        service.keyring.reload()
        return _json({"key": secret, **info.to_dict()}, 201)

    @app.delete("/v1/keys/{key_id}", tags=["governance"], summary="Revoke an API key")
    async def keys_revoke(key_id: str, request: Request, reason: str = "") -> Response:
        info = await run_in_threadpool(
            lambda: Keys(service.store.engine).revoke(key_id, actor=_actor(request), reason=reason)
        )
        service.keyring.forget(key_id)
        return _json(info.to_dict())

    @app.post("/v1/keys/{key_id}/rotate", tags=["governance"], summary="Replace an API key")
    async def keys_rotate(key_id: str, request: Request) -> Response:
        info, secret = await run_in_threadpool(
            lambda: Keys(service.store.engine).rotate(key_id, actor=_actor(request))
        )
        service.keyring.forget(key_id)
        service.keyring.reload()
        return _json({"key": secret, **info.to_dict()}, 201)

    async def _switch(stop: bool, body: Reason, request: Request) -> Response:
        move = service.rollout.stop if stop else service.rollout.resume
        st = await run_in_threadpool(lambda: move(actor=_actor(request), reason=body.reason))
        service.refresh()  # this replica applies it now; others within a poll interval
        return _json({"stopped": stop, "state": st.to_dict()})

    @app.post("/v1/stop", tags=["governance"], summary="Stop calling models (stop switch)")
    async def stop(body: Reason, request: Request) -> Response:
        return await _switch(True, body, request)

    @app.post("/v1/resume", tags=["governance"], summary="Undo the stop switch")
    async def resume(body: Reason, request: Request) -> Response:
        return await _switch(False, body, request)

    @app.post("/v1/retention/purge", tags=["governance"], summary="Purge past retention now")
    async def retention_purge(request: Request) -> Response:
        res = await run_in_threadpool(
            purge, service.store.engine, service.name, service.manifest.retention,
            actor=_actor(request),
        )  # fmt: skip
        return _json(res)

    # -- feedback and monitoring ---------------------------------------------------------------

    @app.post("/v1/feedback", tags=["monitoring"], summary="Ground-truth labels for decisions")
    async def post_feedback(request: Request) -> Response:
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if isinstance(payload, dict) and "feedback" in payload:
            items = payload["feedback"]
        elif isinstance(payload, dict) and "id" in payload:
            items = [payload]
        else:
            raise BadRequest('send {"id": ..., "label": ...} or {"feedback": [{...}, ...]}')
        if not isinstance(items, list):
            raise BadRequest('"feedback" must be a list of {"id", "label"} objects')
        stored = await run_in_threadpool(
            record_feedback, service.store.engine, service.name, service.manifest.output, items,
            actor=_actor(request),
        )  # fmt: skip
        return _json({"stored": stored}, 201)

    @app.get("/v1/monitor", tags=["monitoring"], summary="The latest monitor window")
    async def monitor_latest() -> Response:
        rows = await run_in_threadpool(service.monitor.latest, 1)
        if not rows:
            raise NotFound("the monitor has not run yet: POST /v1/monitor/run or wait for it")
        return _json(rows[0])

    @app.get("/v1/monitor/history", tags=["monitoring"], summary="Recent monitor windows")
    async def monitor_history(limit: int = 20) -> Response:
        return _json({"windows": await run_in_threadpool(service.monitor.latest, min(limit, 500))})

    @app.post("/v1/monitor/run", tags=["monitoring"], summary="Run the monitor on a window now")
    async def monitor_run() -> Response:
        return _json(await run_in_threadpool(service.monitor.run))

    @app.get("/v1/alerts", tags=["monitoring"], summary="Alert firings and resolutions")
    async def alerts(limit: int = 100) -> Response:
        return _json({"events": await run_in_threadpool(service.monitor.alerts.events, limit)})

    # -- human review ---------------------------------------------------------------------------

    @app.get("/v1/review/next", tags=["review"], summary="Claim the next item to review")
    async def review_next(request: Request, queue: str | None = None) -> Response:
        item = await run_in_threadpool(service.review.claim, _actor(request), queue)
        if item is None:
            return Response(status_code=204)
        return _json(item)

    @app.get("/v1/review/stats", tags=["review"], summary="Queues, throughput, override rates")
    async def review_stats() -> Response:
        return _json(await run_in_threadpool(service.review.stats))

    @app.get("/v1/review/{item_id}", tags=["review"], summary="One review item")
    async def review_item(item_id: str) -> Response:
        return _json(await run_in_threadpool(service.review.get, item_id))

    @app.post("/v1/review/{item_id}", tags=["review"], summary="Approve, override or escalate")
    async def review_decide(item_id: str, body: ReviewOutcome, request: Request) -> Response:
        item = await run_in_threadpool(
            lambda: service.review.decide(item_id, _actor(request), body.action,
                                          output=body.output, reason=body.reason)
        )  # fmt: skip
        return _json(item)

    @app.get("/v1/review/{item_id}/explain", tags=["review"], summary="What pushed the answer")
    async def review_explain(item_id: str) -> Response:
        return _json(await run_in_threadpool(service.explain, item_id))

    # -- OpenAPI with the real contract ---------------------------------------------------------

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            predict_openapi(schema, service.manifest)
            secure_openapi(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    static = frozenset(p for r in app.router.routes if "{" not in (p := getattr(r, "path", "{")))
    app.add_middleware(AccessMiddleware, service=service)
    app.add_middleware(MetricsMiddleware, service=service, static_paths=static)
    return app


__all__ = ["create_app"]

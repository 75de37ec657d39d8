"""Governance over HTTP: the audit log, API keys, the stop switch, retention."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.common import actor_of, json_response, service_of
from shipway.api.control import KeyCreate, Reason
from shipway.govern import audit
from shipway.manifest import parse_duration

router = APIRouter()


@router.get("/v1/audit", tags=["governance"], summary="Audit events, newest first")
async def audit_list(request: Request, limit: int = 100, since_seq: int = 0) -> Response:
    engine = service_of(request).store.engine
    rows = await run_in_threadpool(
        audit.events, engine, since_seq=since_seq, limit=min(limit, 10_000), newest_first=True
    )
    return json_response({"events": rows})


@router.get("/v1/audit/verify", tags=["governance"], summary="Check the whole hash chain")
async def audit_verify(request: Request) -> Response:
    """The chain, and the newest signed checkpoint held against it (events removed from the
    end of the chain with its head moved back are found only that way)."""
    service = service_of(request)
    res = await run_in_threadpool(service.verify_audit, service.secret_key)
    return json_response(res, 200 if res["ok"] else 409)


@router.get("/v1/keys", tags=["governance"], summary="API keys, without secrets")
async def keys_list(request: Request) -> Response:
    keys = await run_in_threadpool(service_of(request).keys.list)
    return json_response({"keys": [k.to_dict() for k in keys]})


@router.post("/v1/keys", tags=["governance"], summary="Create an API key (shown once)")
async def keys_create(body: KeyCreate, request: Request) -> Response:
    service = service_of(request)
    expires = parse_duration(body.expires) if body.expires else None
    actor = actor_of(request)
    info, secret = await run_in_threadpool(
        lambda: service.keys.create(
            name=body.name, role=body.role, actor=actor, expires_in=expires, reason=body.reason
        )
    )
    service.keyring.reload()
    return json_response({"key": secret, **info.to_dict()}, 201)


@router.delete("/v1/keys/{key_id}", tags=["governance"], summary="Revoke an API key")
async def keys_revoke(key_id: str, request: Request, reason: str = "") -> Response:
    service = service_of(request)
    actor = actor_of(request)
    info = await run_in_threadpool(lambda: service.keys.revoke(key_id, actor=actor, reason=reason))
    service.keyring.forget(key_id)
    return json_response(info.to_dict())


@router.post("/v1/keys/{key_id}/rotate", tags=["governance"], summary="Replace an API key")
async def keys_rotate(key_id: str, request: Request) -> Response:
    service = service_of(request)
    actor = actor_of(request)
    info, secret = await run_in_threadpool(lambda: service.keys.rotate(key_id, actor=actor))
    service.keyring.forget(key_id)
    service.keyring.reload()
    return json_response({"key": secret, **info.to_dict()}, 201)


async def _switch(stop: bool, body: Reason, request: Request) -> Response:
    service = service_of(request)
    move = service.rollout.stop if stop else service.rollout.resume
    actor = actor_of(request)
    st = await run_in_threadpool(lambda: move(actor=actor, reason=body.reason))
    service.refresh()  # this replica applies it now; others within a poll interval
    return json_response({"stopped": stop, "state": st.to_dict()})


@router.post("/v1/stop", tags=["governance"], summary="Stop calling models (stop switch)")
async def stop(body: Reason, request: Request) -> Response:
    return await _switch(True, body, request)


@router.post("/v1/resume", tags=["governance"], summary="Undo the stop switch")
async def resume(body: Reason, request: Request) -> Response:
    return await _switch(False, body, request)


@router.post("/v1/retention/purge", tags=["governance"], summary="Purge past retention now")
async def retention_purge(request: Request) -> Response:
    service = service_of(request)
    return json_response(await run_in_threadpool(service.purge, actor_of(request)))


__all__ = ["router"]

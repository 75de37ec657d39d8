"""The one ingress: every HTTP request that carries rows comes through here.

``/v1/predict``, ``/v2/models/{name}[/versions/{v}]/infer``, ``/v1/feedback`` and
``/v1/ingest/{source}`` share one sequence, written once:

    route → authenticate and check the role (api/access.py's table) → method
          → body limit by Content-Length (413) → admission: every rate limit by its key (429),
            the in-flight bound (503) → read the body, limit again while reading (413)
          → parse (orjson; V2 tensors) → row limit (400) → principal → caller
          → the service call → one JSON error body on every failure → metrics

It is a plain ASGI callable placed ahead of the control API (FastAPI): a request for one of
its routes never enters the generic middleware stack, so the path that every prediction takes
does each of these steps once, inline. Everything else goes to the control app unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from shipway.api import v2
from shipway.api.access import permissions_for
from shipway.api.errors import error_body, error_headers, status_for
from shipway.data.files import normalise, read_bytes, records_table
from shipway.errors import (
    BadRequest,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    ShipwayError,
)
from shipway.govern.roles import DEV, ROLES, Principal
from shipway.manifest import Duration
from shipway.service import Service

log = logging.getLogger("shipway.api")

_perf = time.perf_counter
_loads = orjson.loads
_dumps = orjson.dumps
_JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Call:
    """One request inside the ingress: who sent it and what it carries."""

    scope: Scope
    headers: Headers
    principal: Principal
    caller: str | None
    body: bytes
    params: dict[str, str]


Handler = Callable[["Ingress", Call], Awaitable[tuple[int, bytes, list[tuple[bytes, bytes]]]]]


@dataclass(frozen=True, slots=True)
class IngressRoute:
    template: str  # the route's name in metrics and errors
    handler: Handler
    v2_errors: bool = False  # the Open Inference Protocol's error body


def _headers_of(exc: ShipwayError) -> list[tuple[bytes, bytes]]:
    extra = [(k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()]
    return [*_JSON, *extra]


class Ingress:
    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        m = service.manifest
        self.max_body = m.serving.max_body_bytes
        self.max_rows = m.serving.max_batch_rows
        self.max_feedback_rows = m.serving.max_feedback_rows
        self.max_ingest_rows = m.serving.max_ingest_rows
        self.protect = not service.dev_mode
        self.limit_keys = [r.key for r in m.serving.limits.rates]
        self.metrics = service.metrics
        self._exact: dict[str, IngressRoute] = {
            "/v1/predict": IngressRoute("/v1/predict", predict_v1),
            "/v1/feedback": IngressRoute("/v1/feedback", feedback),
        }
        self._ingest = IngressRoute("/v1/ingest/{source}", ingest)
        self._v2 = IngressRoute("/v2/models/{model}/infer", infer_v2, v2_errors=True)
        self._v2v = IngressRoute(
            "/v2/models/{model}/versions/{version}/infer", infer_v2, v2_errors=True
        )

    def _match(self, path: str) -> tuple[IngressRoute, dict[str, str]] | None:
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        if path.startswith("/v1/ingest/"):
            name = path[len("/v1/ingest/") :]
            if name and "/" not in name:
                return self._ingest, {"source": name}
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path[len("/v2/models/") : -len("/infer")].split("/")
            if len(parts) == 1 and parts[0]:
                return self._v2, {"model": parts[0]}
            if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                return self._v2v, {"model": parts[0], "version": parts[2]}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = self._match(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        t0 = _perf()
        status = 500
        try:
            status, body, headers = await self._handle(route, params, scope, receive)
        except ShipwayError as exc:
            status = status_for(exc)
            body, headers = error_body(exc, route.v2_errors), _headers_of(exc)
        except Exception as exc:  # never a traceback to the caller; always the log
            log.exception("unexpected error on %s", route.template)
            status = 500
            err = InternalError(f"unexpected {type(exc).__name__}; see the server log")
            body, headers = error_body(err, route.v2_errors), list(_JSON)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe_http(route.template, status, _perf() - t0)

    async def _handle(
        self, route: IngressRoute, params: dict[str, str], scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        headers = Headers(scope=scope)
        principal = self._authenticate(scope, headers)
        if scope["method"] != "POST":
            exc = MethodNotAllowed(
                f"{scope['method']} is not allowed on {route.template}; use POST"
            )
            return 405, error_body(exc, route.v2_errors), [*_JSON, (b"allow", b"POST")]
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(
                f"the body has {declared} bytes; the limit is {self.max_body} "
                "(serving.max_body_bytes)"
            )
        client = scope.get("client")
        address = client[0] if client else None
        service = self.service
        service.admit(self._limit_keys(principal, address, headers))
        try:
            body = await self._body(receive)
            if principal.kind == "dev":
                caller = headers.get("x-shipway-caller") or address
            else:
                caller = principal.actor
            call = Call(scope, headers, principal, caller, body, params)
            return await route.handler(self, call)
        finally:
            service.release()

    def _authenticate(self, scope: Scope, headers: Headers) -> Principal:
        if not self.protect:
            scope.setdefault("state", {})["principal"] = DEV
            return DEV
        principal = self.service.authenticator.authenticate(headers)
        perms = permissions_for(scope["method"], scope["path"]) or ("admin",)
        if not any(principal.can(p) for p in perms):
            allowed = [r for r, p in ROLES.items() if p & set(perms)]
            raise Forbidden(
                f"{scope['method']} {scope['path']} needs one of the roles "
                f"{', '.join(allowed)}; {principal.name} has "
                f"{', '.join(sorted(principal.roles)) or 'no role'}"
            )
        scope.setdefault("state", {})["principal"] = principal
        return principal

    def _limit_keys(self, principal: Principal, address: str | None, headers: Headers) -> list[str]:
        keys = []
        for key in self.limit_keys:
            if key == "principal":
                if principal.kind == "dev":
                    keys.append("c:" + (address or "unknown"))
                else:
                    keys.append("p:" + (principal.key_id or f"{principal.kind}:{principal.name}"))
            elif key == "client":
                keys.append("c:" + (address or "unknown"))
            else:
                name = key.split(":", 1)[1].strip()
                value = headers.get(name)
                if not value:
                    raise BadRequest(
                        f"the request has no {name} header, which this service's "
                        f"rate limit is keyed by (serving.limits.rate.key: {key})",
                        field=name,
                        rule="required_header",
                    )
                keys.append("h:" + value)
        return keys

    async def _body(self, receive: Receive) -> bytes:
        limit = self.max_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client went away before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the body has more than {limit} bytes; the limit is {limit} "
                        "(serving.max_body_bytes)"
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def check_rows(self, n: int, limit: int, setting: str) -> None:
        if n > limit:
            raise BadRequest(
                f"the request has {n} rows; this service takes at most {limit} per request "
                f"({setting})"
            )


def parse_json(body: bytes) -> Any:
    try:
        return _loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


# -- the routes --------------------------------------------------------------------------------


#: What a predict request may ask for beyond each row's output and confidence.
RETURNABLE = frozenset({"probabilities"})


async def predict_v1(ing: Ingress, call: Call) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """``{"inputs": {...}}`` (one row) or ``{"inputs": [{...}, ...]}`` (a batch), optionally
    with ``"return": ["probabilities"]``."""
    payload = parse_json(call.body)
    if type(payload) is not dict or "inputs" not in payload:
        raise BadRequest('the body must be a JSON object with an "inputs" field')
    probabilities = False
    if len(payload) > 1:
        extra = sorted(payload.keys() - {"inputs", "return"})
        if extra:
            raise BadRequest(
                f'unknown top-level field(s): {extra}; only "inputs" and "return" are read'
            )
        wanted = payload["return"]
        if type(wanted) is not list or any(
            type(w) is not str or w not in RETURNABLE for w in wanted
        ):
            raise BadRequest(
                f'"return" must be a list of {sorted(RETURNABLE)}, not {str(wanted)[:80]}'
            )
        probabilities = "probabilities" in wanted
    inputs = payload["inputs"]
    if type(inputs) is dict:
        records, single = [inputs], True
    elif type(inputs) is list:
        if not inputs:
            raise BadRequest('"inputs" is an empty list: send at least one row')
        ing.check_rows(len(inputs), ing.max_rows, "serving.max_batch_rows")
        records, single = inputs, False
    else:
        raise BadRequest('"inputs" must be an object (one row) or a list of objects (a batch)')
    result = await ing.service.predict(
        records, single, call.caller, call.headers, probabilities=probabilities
    )
    status = 202 if result.get("status") == "pending_review" else 200
    return status, _dumps(result), list(_JSON)


_FEEDBACK_OPTIONS = ("within", "skip_unmatched")


async def feedback(ing: Ingress, call: Call) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """``{"id" | "key", "label"}`` or ``{"feedback": [{...}, ...]}``; with items given by
    ``key`` (the contract's id field), optional ``"within": "30d"`` (how far back to look for
    the decision) and ``"skip_unmatched": true`` (store the rest when a key names none)."""
    payload = parse_json(call.body)
    if isinstance(payload, dict) and "feedback" in payload:
        items = payload["feedback"]
    elif isinstance(payload, dict) and ("id" in payload or "key" in payload):
        items = [{k: v for k, v in payload.items() if k not in _FEEDBACK_OPTIONS}]
    else:
        raise BadRequest(
            'send {"id": ..., "label": ...}, {"key": ..., "label": ...} or '
            '{"feedback": [{...}, ...]}'
        )
    if not isinstance(items, list):
        raise BadRequest('"feedback" must be a list of {"id" or "key", "label"} objects')
    ing.check_rows(len(items), ing.max_feedback_rows, "serving.max_feedback_rows")
    within_s = None
    within = payload.get("within")
    if within is not None:
        if not isinstance(within, str):
            raise BadRequest('"within" must be a duration such as "30d" or "12h"')
        within_s = Duration(within).seconds  # InputError names the problem
    skip = payload.get("skip_unmatched", False)
    if not isinstance(skip, bool):
        raise BadRequest('"skip_unmatched" must be true or false')
    p = call.principal
    if p.kind == "dev":  # development mode: the actor the caller names, with every role
        name = call.headers.get("x-shipway-actor") or "development"
        p = Principal(name, DEV.roles, kind="dev")
    stored = await run_in_threadpool(
        functools.partial(
            ing.service.record_feedback, items, p, within_s=within_s, skip_unmatched=skip
        )
    )
    body: dict[str, Any] = {"stored": stored}
    if skip:
        body["unmatched"] = len(items) - len(stored)
    return 201, _dumps(body), list(_JSON)


#: Body types a push source reads, by Content-Type.
_PUSH_FORMATS = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
}


def _pushed_rows(ing: Ingress, call: Call) -> Any:  # a pyarrow.Table
    """A push body as a table: JSON (a list of records, or ``{"records": [...]}``), JSON
    lines, CSV or Parquet (by Content-Type; Parquet is also known by its magic bytes)."""
    ctype = (call.headers.get("content-type") or "").split(";")[0].strip().lower()
    fmt = _PUSH_FORMATS.get(ctype)
    if fmt is None and call.body[:4] == b"PAR1":
        fmt = "parquet"
    if fmt is not None:
        return read_bytes(call.body, "the body", fmt, ing.service.manifest.contract)
    payload = parse_json(call.body)
    records = payload.get("records") if isinstance(payload, dict) else payload
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BadRequest(
            'send a JSON list of records, {"records": [...]}, JSON lines, CSV (text/csv) or '
            "Parquet (application/vnd.apache.parquet)",
            field="records",
            rule="shape",
        )
    if not records:
        raise BadRequest("the body holds no rows", field="records", rule="non_empty")
    return normalise(records_table(records), ing.service.manifest.contract)


async def ingest(ing: Ingress, call: Call) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Rows pushed to a ``kind: push`` source: checked, validated, quarantined and used as
    the source says (scored, kept as a dataset version, stored as labels) before the reply.
    200 when used, 422 when the batch is held (its rows quarantined with reasons), 500 when
    it failed; the same body again is not taken twice (``duplicate``)."""
    service = ing.service
    name = call.params["source"]
    spec = service.source(name)  # NotFound names the sources
    if spec.kind != "push":
        raise BadRequest(
            f"source {name} is a {spec.kind} source; only push sources take rows over HTTP",
            field="source",
            rule="push_source",
        )
    table = await run_in_threadpool(_pushed_rows, ing, call)  # off the event loop
    ing.check_rows(table.num_rows, ing.max_ingest_rows, "serving.max_ingest_rows")
    result = await service.run_source(name, call.principal.actor, pushed=table)
    body = result.to_json()
    pushed = result.files[-1]
    body["duplicate"] = pushed.status == "duplicate"
    if pushed.answers is not None:
        body["decisions"] = pushed.answers
    status = {"held": 422, "failed": 500}.get(pushed.status, 200)
    return status, orjson.dumps(body, default=str), list(_JSON)


async def infer_v2(ing: Ingress, call: Call) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Open Inference Protocol infer: tensors in, rows through the same predict call as /v1,
    tensors out."""
    service = ing.service
    v2.check_model(service, call.params["model"], call.params.get("version"))
    body, binary = v2.split_body(call.body, call.headers.get("inference-header-content-length"))
    request = parse_json(body)
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    records = v2.records(request, service.contract.names, binary)
    options = v2.response_options(request)  # refused before any row is answered
    ing.check_rows(len(records), ing.max_rows, "serving.max_batch_rows")
    result = await service.predict(records, False, call.caller, call.headers, allow_partial=False)
    content, ctype, extra = v2.response(service, request, result["decisions"], options)
    return 200, content, [(b"content-type", ctype), *extra]


__all__ = ["Call", "Ingress", "IngressRoute", "parse_json"]

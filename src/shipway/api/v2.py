"""Open Inference Protocol (KServe V2) over HTTP, so existing V2 clients work unchanged.

Routes: ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}[/versions/{v}]``, ``GET /v2/models/{name}[/versions/{v}]/ready``,
``POST /v2/models/{name}[/versions/{v}]/infer``.

Input tensors map to the contract: one tensor per input field (shape ``[N]`` or ``[N, 1]``,
named as the field), or a single tensor of shape ``[N, F]`` holding every field in contract
order. Both JSON data and the binary tensor extension (``Inference-Header-Content-Length``)
are read. The rows then take the same path as ``/v1/predict``: validation, routing, guards
and the decision log. Output tensors: ``output`` (the answer), ``confidence`` (FP64, NaN when
the model gives none), ``decision_id``, ``route`` (BYTES) and ``model_version`` (INT64), one
element per row; JSON by default, binary when the request asks for it.

A V2 batch is all or nothing: a row that breaks the contract fails the request with 422.
Errors follow the protocol (``{"error": "code: message"}``) and carry Shipway's stable
``code`` and details (``fields`` naming row, field and rule) beside it.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipway import __version__
from shipway.api.errors import status_for
from shipway.errors import BadRequest, NotFound, ShipwayError
from shipway.service import Service

_NP = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_FIELD_TYPE = {
    "int": "INT64",
    "float": "FP64",
    "bool": "BOOL",
    "category": "BYTES",
    "string": "BYTES",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


def _v2_error(exc: ShipwayError) -> Response:
    """The protocol's error body (``error`` is a string, which V2 clients print), with the
    stable ``code`` and the usual details beside it."""
    body = exc.to_dict()
    code = body.pop("code")
    message = body.pop("message")
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return _json({"error": f"{code}: {message}", "code": code, **body}, status_for(exc), headers)


def _bytes_elements(raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        out.append(raw[i : i + n].decode("utf-8"))
        i += n
    return out


def _serialize_bytes(values: list[Any]) -> bytes:
    parts = []
    for v in values:
        b = str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _tensor_values(
    t: dict[str, Any], binary: memoryview | None, offset: int
) -> tuple[list[Any], int]:
    """A tensor's elements as a flat Python list, and the new offset into the binary part."""
    dtype = t.get("datatype")
    params = t.get("parameters") or {}
    size = params.get("binary_data_size")
    if size is not None:
        if binary is None or offset + size > len(binary):
            raise BadRequest(f"input {t.get('name')!r}: binary data is shorter than declared")
        raw = bytes(binary[offset : offset + size])
        offset += size
        if dtype == "BYTES":
            return _bytes_elements(raw), offset
        if dtype not in _NP:
            raise BadRequest(f"input {t.get('name')!r}: unsupported datatype {dtype!r}")
        return np.frombuffer(raw, dtype=np.dtype(_NP[dtype]).newbyteorder("<")).tolist(), offset
    data = t.get("data")
    if data is None:
        raise BadRequest(f"input {t.get('name')!r} has neither data nor binary_data_size")
    arr = np.asarray(data, dtype=object).reshape(-1).tolist()
    if dtype in ("FP16", "FP32", "FP64"):
        arr = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
               for v in arr]  # fmt: skip
    return arr, offset


def _records(body: dict[str, Any], names: list[str], binary: memoryview | None) -> list[dict]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('the body must hold a non-empty "inputs" list of tensors')
    offset = 0
    columns: dict[str, list[Any]] = {}
    matrix: tuple[list[Any], int] | None = None
    for t in inputs:
        if not isinstance(t, dict) or "name" not in t or "shape" not in t:
            raise BadRequest("every input tensor needs a name, a shape and a datatype")
        values, offset = _tensor_values(t, binary, offset)
        shape = [int(d) for d in t["shape"]]
        if math.prod(shape) != len(values):
            raise BadRequest(
                f"input {t['name']!r}: shape {shape} does not hold {len(values)} elements"
            )
        if t["name"] in names:
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise BadRequest(f"input {t['name']!r}: a field tensor has shape [N] or [N, 1]")
            columns[t["name"]] = values
        elif len(inputs) == 1 and len(shape) == 2 and shape[1] == len(names):
            matrix = (values, shape[0])
        else:
            raise BadRequest(
                f"input {t['name']!r} is not a contract field; send one tensor per field "
                f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) or one [N, "
                f"{len(names)}] tensor"
            )
    if matrix is not None:
        values, n = matrix
        width = len(names)
        return [dict(zip(names, values[i * width : (i + 1) * width], strict=True))
                for i in range(n)]  # fmt: skip
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise BadRequest(f"input tensors differ in length: {sorted(lengths)}")
    n = lengths.pop()
    cols = list(columns.items())
    return [{k: v[i] for k, v in cols} for i in range(n)]


def _output_tensors(
    decisions: list[dict[str, Any]], kind: str, labels: list[Any] | None
) -> list[dict[str, Any]]:
    outs = [d["output"] for d in decisions]
    n = len(outs)
    if kind == "regression" or all(isinstance(o, float) for o in outs):
        out_t = {"name": "output", "datatype": "FP64", "shape": [n], "data": outs}
    elif all(isinstance(o, int) and not isinstance(o, bool) for o in outs):
        out_t = {"name": "output", "datatype": "INT64", "shape": [n], "data": outs}
    elif all(isinstance(o, bool) for o in outs):
        out_t = {"name": "output", "datatype": "BOOL", "shape": [n], "data": outs}
    else:
        out_t = {"name": "output", "datatype": "BYTES", "shape": [n],
                 "data": [str(o) for o in outs]}  # fmt: skip
    conf = [d["confidence"] if d["confidence"] is not None else float("nan") for d in decisions]
    return [
        out_t,
        {"name": "confidence", "datatype": "FP64", "shape": [n], "data": conf},
        {"name": "decision_id", "datatype": "BYTES", "shape": [n],
         "data": [d["id"] for d in decisions]},
        {"name": "route", "datatype": "BYTES", "shape": [n],
         "data": [d["route"] for d in decisions]},
        {"name": "model_version", "datatype": "INT64", "shape": [n],
         "data": [d["model_version"] if d["model_version"] is not None else -1
                  for d in decisions]},
    ]  # fmt: skip


def _encode(
    response: dict[str, Any], requested: list[dict[str, Any]] | None, binary_all: bool
) -> tuple[bytes, dict[str, str]]:
    """JSON, or JSON header plus binary tensors where the request asked for binary data."""
    wanted = {o["name"]: (o.get("parameters") or {}) for o in requested or []}
    if wanted:
        response["outputs"] = [t for t in response["outputs"] if t["name"] in wanted]
    chunks: list[bytes] = []
    for t in response["outputs"]:
        as_binary = wanted.get(t["name"], {}).get("binary_data", binary_all)
        if not as_binary:
            continue
        data = t.pop("data")
        if t["datatype"] == "BYTES":
            raw = _serialize_bytes(data)
        else:
            raw = np.asarray(data, dtype=np.dtype(_NP[t["datatype"]]).newbyteorder("<")).tobytes()
        t["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    head = orjson.dumps(response)
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def v2_routes(service: Service) -> list[Route]:
    names = service.contract.names
    name = service.name
    manifest = service.manifest
    labels = list(manifest.output.labels or [])

    def _check_model(model: str, version: str | None = None) -> None:
        if model != name:
            raise NotFound(f"no model named {model!r}; this server serves {name!r}")
        if version is not None and version != str(service.router.champion.version):
            known = {str(m.version) for m in service.registry.list(name)}
            if version not in known:
                raise NotFound(f"model {name!r} has no version {version!r}")

    async def server_meta(_request: Request) -> Response:
        return _json(
            {"name": "shipway", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def live(_request: Request) -> Response:
        return _json({"live": True})

    async def ready(_request: Request) -> Response:
        ok = service.readiness()["ready"]
        return _json({"ready": ok}, 200 if ok else 503)

    async def model_meta(request: Request) -> Response:
        try:
            _check_model(request.path_params["model"], request.path_params.get("version"))
        except ShipwayError as exc:
            return _v2_error(exc)
        out_type = "FP64" if manifest.output.kind == "regression" else (
            "INT64" if labels and all(isinstance(x, int) and not isinstance(x, bool)
                                      for x in labels) else "BYTES"
        )  # fmt: skip
        return _json({
            "name": name,
            "versions": [str(m.version) for m in service.registry.list(name)],
            "platform": "shipway",
            "inputs": [{"name": f.name, "datatype": _FIELD_TYPE[f.type], "shape": [-1]}
                       for f in manifest.contract.inputs],
            "outputs": [
                {"name": "output", "datatype": out_type, "shape": [-1]},
                {"name": "confidence", "datatype": "FP64", "shape": [-1]},
                {"name": "decision_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "route", "datatype": "BYTES", "shape": [-1]},
                {"name": "model_version", "datatype": "INT64", "shape": [-1]},
            ],
        })  # fmt: skip

    async def model_ready(request: Request) -> Response:
        try:
            _check_model(request.path_params["model"], request.path_params.get("version"))
        except ShipwayError as exc:
            return _v2_error(exc)
        ok = service.readiness()["ready"]
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def infer(request: Request) -> Response:
        try:
            _check_model(request.path_params["model"], request.path_params.get("version"))
            raw = await request.body()
            head_len = request.headers.get("inference-header-content-length")
            binary: memoryview | None = None
            if head_len is not None:
                try:
                    k = int(head_len)
                except ValueError:
                    raise BadRequest("Inference-Header-Content-Length is not a number") from None
                if not 0 < k <= len(raw):
                    raise BadRequest("Inference-Header-Content-Length is outside the body")
                binary = memoryview(raw)[k:]
                raw = raw[:k]
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            records = _records(body, names, binary)
            if len(records) > manifest.serving.max_batch_rows:
                raise BadRequest(
                    f"{len(records)} rows; this service takes at most "
                    f"{manifest.serving.max_batch_rows} per request (serving.max_batch_rows)"
                )
            client = request.client.host if request.client else None
            p = request.scope.get("state", {}).get("principal")
            who = (p.key_id or p.name) if p is not None and p.kind != "dev" else None
            service.admit(client, request.headers, who)
        except ShipwayError as exc:
            return _v2_error(exc)
        try:
            result = await service.predict_path.run_records(
                records, False, client, request.headers, allow_partial=False
            )
        except ShipwayError as exc:
            return _v2_error(exc)
        finally:
            service.release()
        response: dict[str, Any] = {
            "model_name": name,
            "model_version": str(service.router.champion.version),
            "outputs": _output_tensors(result["decisions"], manifest.output.kind, labels),
        }
        if body.get("id") is not None:
            response["id"] = body["id"]
        params = body.get("parameters") or {}
        content, headers = _encode(
            response, body.get("outputs"), bool(params.get("binary_data_output", False))
        )
        ctype = headers.pop("content-type")
        return Response(content, media_type=ctype, headers=headers)

    base = "/v2/models/{model}"
    return [
        Route("/v2", server_meta, methods=["GET"], name="v2_server"),
        Route("/v2/health/live", live, methods=["GET"], name="v2_live"),
        Route("/v2/health/ready", ready, methods=["GET"], name="v2_ready"),
        Route(base, model_meta, methods=["GET"], name="v2_model"),
        Route(base + "/versions/{version}", model_meta, methods=["GET"], name="v2_model_v"),
        Route(base + "/ready", model_ready, methods=["GET"], name="v2_model_ready"),
        Route(base + "/versions/{version}/ready", model_ready, methods=["GET"]),
        Route(base + "/infer", infer, methods=["POST"], name="v2_infer"),
        Route(base + "/versions/{version}/infer", infer, methods=["POST"], name="v2_infer_v"),
    ]


__all__ = ["v2_routes"]

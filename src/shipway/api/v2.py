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

The infer route is served by the one ingress (``api/ingress.py``: limits, authentication,
admission, the same predict call as ``/v1/predict``); this module is its codec (tensors to
rows, decisions to tensors) and the protocol's read-only routes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shipway import __version__
from shipway.api.errors import shipway_error_response
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
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def v2_error(exc: ShipwayError) -> Response:
    """The protocol's error body (``error`` is a string), with the stable ``code`` beside it."""
    return shipway_error_response(exc, v2=True)


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
        arr = [
            float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in arr
        ]
    return arr, offset


def records(body: dict[str, Any], names: list[str], binary: memoryview | None) -> list[dict]:
    """The rows a V2 request carries (one tensor per field, or one [N, F] tensor)."""
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
        return [
            dict(zip(names, values[i * width : (i + 1) * width], strict=True)) for i in range(n)
        ]
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
        out_t = {
            "name": "output",
            "datatype": "BYTES",
            "shape": [n],
            "data": [str(o) for o in outs],
        }
    conf = [d["confidence"] if d["confidence"] is not None else float("nan") for d in decisions]
    return [
        out_t,
        {"name": "confidence", "datatype": "FP64", "shape": [n], "data": conf},
        {
            "name": "decision_id",
            "datatype": "BYTES",
            "shape": [n],
            "data": [d["id"] for d in decisions],
        },
        {
            "name": "route",
            "datatype": "BYTES",
            "shape": [n],
            "data": [d["route"] for d in decisions],
        },
        {
            "name": "model_version",
            "datatype": "INT64",
            "shape": [n],
            "data": [
                d["model_version"] if d["model_version"] is not None else -1 for d in decisions
            ],
        },
    ]


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


def split_body(raw: bytes, head_len: str | None) -> tuple[bytes, memoryview | None]:
    """The JSON header and the binary tensor data after it (binary tensor extension)."""
    if head_len is None:
        return raw, None
    try:
        k = int(head_len)
    except ValueError:
        raise BadRequest("Inference-Header-Content-Length is not a number") from None
    if not 0 < k <= len(raw):
        raise BadRequest("Inference-Header-Content-Length is outside the body")
    return raw[:k], memoryview(raw)[k:]


def check_model(service: Service, model: str, version: str | None = None) -> None:
    name = service.name
    if model != name:
        raise NotFound(f"no model named {model!r}; this server serves {name!r}")
    if version is not None and version != str(service.router.champion.version):
        known = {str(m.version) for m in service.registry.list(name)}
        if version not in known:
            raise NotFound(f"model {name!r} has no version {version!r}")


def response(
    service: Service, request: dict[str, Any], decisions: list[dict[str, Any]]
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """The infer response: (content, content type, extra headers)."""
    manifest = service.manifest
    out: dict[str, Any] = {
        "model_name": service.name,
        "model_version": str(service.router.champion.version),
        "outputs": _output_tensors(
            decisions, manifest.output.kind, list(manifest.output.labels or [])
        ),
    }
    if request.get("id") is not None:
        out["id"] = request["id"]
    params = request.get("parameters") or {}
    content, headers = _encode(
        out, request.get("outputs"), bool(params.get("binary_data_output", False))
    )
    ctype = headers.pop("content-type").encode()
    return content, ctype, [(k.lower().encode(), v.encode()) for k, v in headers.items()]


# -- the protocol's read-only routes -------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


@router.get("/v2")
async def server_meta() -> Response:
    return _json({"name": "shipway", "version": __version__, "extensions": ["binary_tensor_data"]})


@router.get("/v2/health/live")
async def live() -> Response:
    return _json({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    ok = _service(request).readiness()["ready"]
    return _json({"ready": ok}, 200 if ok else 503)


def _model_meta(service: Service) -> dict[str, Any]:
    manifest = service.manifest
    labels = list(manifest.output.labels or [])
    if manifest.output.kind == "regression":
        out_type = "FP64"
    elif labels and all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        out_type = "INT64"
    else:
        out_type = "BYTES"
    return {
        "name": service.name,
        "versions": [str(m.version) for m in service.registry.list(service.name)],
        "platform": "shipway",
        "inputs": [
            {"name": f.name, "datatype": _FIELD_TYPE[f.type], "shape": [-1]}
            for f in manifest.contract.inputs
        ],
        "outputs": [
            {"name": "output", "datatype": out_type, "shape": [-1]},
            {"name": "confidence", "datatype": "FP64", "shape": [-1]},
            {"name": "decision_id", "datatype": "BYTES", "shape": [-1]},
            {"name": "route", "datatype": "BYTES", "shape": [-1]},
            {"name": "model_version", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/v2/models/{model}")
@router.get("/v2/models/{model}/versions/{version}")
async def model_meta(request: Request, model: str, version: str | None = None) -> Response:
    service = _service(request)
    try:
        check_model(service, model, version)
    except ShipwayError as exc:
        return v2_error(exc)
    return _json(_model_meta(service))


@router.get("/v2/models/{model}/ready")
@router.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    service = _service(request)
    try:
        check_model(service, model, version)
    except ShipwayError as exc:
        return v2_error(exc)
    ok = service.readiness()["ready"]
    return _json({"name": service.name, "ready": ok}, 200 if ok else 503)


__all__ = ["check_model", "records", "response", "router", "split_body", "v2_error"]

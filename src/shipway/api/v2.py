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
    "datetime": "BYTES",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def v2_error(exc: ShipwayError) -> Response:
    """The protocol's error body (``error`` is a string), with the stable ``code`` beside it."""
    return shipway_error_response(exc, v2=True)


def _bytes_elements(name: Any, raw: bytes) -> list[str]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BadRequest(f"input {name!r}: a BYTES element's length prefix is cut short")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise BadRequest(f"input {name!r}: a BYTES element is longer than the data")
        try:
            out.append(raw[i : i + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"input {name!r}: a BYTES element is not valid UTF-8") from None
        i += n
    return out


def _serialize_bytes(values: list[Any]) -> bytes:
    parts = []
    for v in values:
        b = str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{what}: parameters must be an object")
    return params


def _flatten(name: Any, data: Any) -> list[Any]:
    """Row-major elements of a (possibly nested) JSON array of scalars."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= 8:
                    raise BadRequest(f"input {name!r}: data is nested more deeply than a tensor")
                stack.append(iter(item))
                break
            if isinstance(item, dict):
                raise BadRequest(f"input {name!r}: data elements must be scalars")
            out.append(item)
        else:
            stack.pop()
    return out


def _tensor_values(
    t: dict[str, Any], binary: memoryview | None, offset: int
) -> tuple[list[Any], int]:
    """A tensor's elements as a flat Python list, and the new offset into the binary part."""
    name = t.get("name")
    dtype = t.get("datatype")
    if dtype != "BYTES" and dtype not in _NP:
        raise BadRequest(f"input {name!r}: unsupported datatype {dtype!r}")
    size = _parameters(t, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if binary is None or offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary data is shorter than declared")
        raw = bytes(binary[offset : offset + size])
        offset += size
        if dtype == "BYTES":
            return _bytes_elements(name, raw), offset
        item = np.dtype(_NP[dtype])
        if size % item.itemsize:
            raise BadRequest(
                f"input {name!r}: {size} bytes is not a whole number of {dtype} elements "
                f"({item.itemsize} bytes each)"
            )
        return np.frombuffer(raw, dtype=item.newbyteorder("<")).tolist(), offset
    if "data" not in t or t["data"] is None:
        raise BadRequest(f"input {name!r} has neither data nor binary_data_size")
    arr = _flatten(name, t["data"])
    if dtype in ("FP16", "FP32", "FP64"):
        arr = [
            float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in arr
        ]
    return arr, offset


def _shape(t: dict[str, Any]) -> list[int]:
    shape = t["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(f"input {t.get('name')!r}: shape must be a list of non-negative integers")
    if len(shape) > 8:
        raise BadRequest(f"input {t.get('name')!r}: a tensor has at most 8 dimensions here")
    return shape


def records(body: dict[str, Any], names: list[str], binary: memoryview | None) -> list[dict]:
    """The rows a V2 request carries (one tensor per field, or one [N, F] tensor)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('the body must hold a non-empty "inputs" list of tensors')
    _parameters(body, "the request")
    offset = 0
    columns: dict[str, list[Any]] = {}
    matrix: tuple[list[Any], int] | None = None
    for t in inputs:
        if not isinstance(t, dict) or "name" not in t or "shape" not in t:
            raise BadRequest("every input tensor needs a name, a shape and a datatype")
        if not isinstance(t["name"], str):
            raise BadRequest("an input tensor's name must be a string")
        shape = _shape(t)
        values, offset = _tensor_values(t, binary, offset)
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


def requested_outputs(request: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The outputs a request asks for, by name (None: all), each with its parameters."""
    asked = request.get("outputs")
    if asked is None:
        return None
    known = {"output", "confidence", "decision_id", "route", "model_version", "status"}
    if not isinstance(asked, list):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects')
    out: dict[str, dict[str, Any]] = {}
    for o in asked:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest('every requested output needs a "name"')
        if o["name"] not in known:
            raise BadRequest(f"no output named {o['name']!r}; outputs: {', '.join(sorted(known))}")
        out[o["name"]] = _parameters(o, f"output {o['name']!r}")
    return out


def _output_type(kind: str, labels: list[Any]) -> str:
    """The output tensor's datatype, from the output spec (the same for every response)."""
    if kind == "regression":
        return "FP64"
    if labels and all(isinstance(x, bool) for x in labels):
        return "BOOL"
    if labels and all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        return "INT64"
    if labels and all(isinstance(x, int | float) and not isinstance(x, bool) for x in labels):
        return "FP64"
    return "BYTES"


#: What a held row (waiting for a reviewer) carries in the output tensor: read ``status``.
_PLACEHOLDER = {"FP64": float("nan"), "INT64": -1, "BOOL": False, "BYTES": ""}


def _output_tensors(
    decisions: list[dict[str, Any]], kind: str, labels: list[Any]
) -> list[dict[str, Any]]:
    """One element per row. A row held for review has ``status`` ``pending_review`` and a
    placeholder output (NaN, -1, false or ""); its answer comes at ``/v1/decisions/{id}``."""
    n = len(decisions)
    dtype = _output_type(kind, labels)
    answered = ["output" in d for d in decisions]
    outs = [
        d["output"] if a else _PLACEHOLDER[dtype] for d, a in zip(decisions, answered, strict=True)
    ]
    if dtype == "BYTES":
        outs = [str(o) for o in outs]
    conf = [
        d["confidence"] if a and d["confidence"] is not None else float("nan")
        for d, a in zip(decisions, answered, strict=True)
    ]

    def bytes_tensor(name: str, data: list[Any]) -> dict[str, Any]:
        return {"name": name, "datatype": "BYTES", "shape": [n], "data": data}

    return [
        {"name": "output", "datatype": dtype, "shape": [n], "data": outs},
        {"name": "confidence", "datatype": "FP64", "shape": [n], "data": conf},
        bytes_tensor("decision_id", [d["id"] for d in decisions]),
        bytes_tensor("route", [d.get("route", "") for d in decisions]),
        {
            "name": "model_version",
            "datatype": "INT64",
            "shape": [n],
            "data": [
                d["model_version"] if d.get("model_version") is not None else -1 for d in decisions
            ],
        },
        bytes_tensor("status", ["answered" if a else "pending_review" for a in answered]),
    ]


def _encode(
    response: dict[str, Any], wanted: dict[str, dict[str, Any]] | None, binary_all: bool
) -> tuple[bytes, dict[str, str]]:
    """JSON, or JSON header plus binary tensors where the request asked for binary data."""
    if wanted:
        response["outputs"] = [t for t in response["outputs"] if t["name"] in wanted]
    chunks: list[bytes] = []
    for t in response["outputs"]:
        as_binary = (wanted or {}).get(t["name"], {}).get("binary_data", binary_all)
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


def response_options(request: dict[str, Any]) -> tuple[dict[str, dict[str, Any]] | None, bool]:
    """What the request asks of the response (checked before any row is answered): the
    outputs by name (None: all) and whether every output is binary."""
    wanted = requested_outputs(request)
    binary_all = _parameters(request, "the request").get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    for name, params in (wanted or {}).items():
        if not isinstance(params.get("binary_data", False), bool):
            raise BadRequest(f"output {name!r}: parameters.binary_data must be true or false")
    return wanted, binary_all


def response(
    service: Service,
    request: dict[str, Any],
    decisions: list[dict[str, Any]],
    options: tuple[dict[str, dict[str, Any]] | None, bool],
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
    content, headers = _encode(out, *options)
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
    out_type = _output_type(manifest.output.kind, list(manifest.output.labels or []))
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
            {"name": "status", "datatype": "BYTES", "shape": [-1]},
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

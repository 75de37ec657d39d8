"""The contract as JSON Schema, for the OpenAPI document and for clients."""

from __future__ import annotations

from typing import Any

from shipway.manifest import ContractSpec, InputField

_JSON_TYPE = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "string": "string",
    "datetime": "string",
}


def field_schema(f: InputField) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if f.type == "category" and f.on_unseen == "reject":
        s["enum"] = list(f.values or [])
    elif f.type == "category":
        s["examples"] = list(f.values or [])
    else:
        s["type"] = _JSON_TYPE[f.type]
    if f.type == "datetime":
        s["format"] = "date-time"
    if f.min is not None:
        s["minimum"] = f.min
    if f.max is not None:
        s["maximum"] = f.max
    if f.nullable:
        s = {"anyOf": [s, {"type": "null"}]}
    if f.description:
        s["description"] = f.description
    return s


def contract_json_schema(spec: ContractSpec) -> dict[str, Any]:
    """JSON Schema of one input record."""
    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in spec.inputs},
        "required": [f.name for f in spec.inputs if not f.nullable],
        "additionalProperties": spec.unknown_fields != "reject",
    }


__all__ = ["contract_json_schema", "field_schema"]

"""The ingress routes' OpenAPI description (``/v1/predict`` from the service's contract, and
``/v1/feedback`` from its output spec), added to the control API's document."""

from __future__ import annotations

from typing import Any

from shipway.contract import contract_json_schema
from shipway.manifest import Manifest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable error code."},
                "message": {"type": "string"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "row": {"type": "integer"},
                            "field": {"type": ["string", "null"]},
                            "rule": {"type": "string"},
                            "value": {},
                            "expected": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}


def _output_schema(manifest: Manifest) -> dict[str, Any]:
    out = manifest.output
    if out.kind == "classification" and out.labels:
        return {"enum": list(out.labels)}
    return {"type": "number"}


def ingress_openapi(schema: dict[str, Any], manifest: Manifest) -> None:
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps["InputRecord"] = contract_json_schema(manifest.contract)
    comps["Decision"] = {
        "type": "object",
        "required": ["id", "output", "confidence", "model_version", "route"],
        "properties": {
            "id": {"type": "string", "description": "Decision id in the decision log."},
            "output": _output_schema(manifest),
            "confidence": {"type": ["number", "null"]},
            "model_version": {"type": "integer"},
            "route": {"type": "string", "description": "Who answered: champion, ..."},
            "probabilities": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "number"},
                "description": 'Class probabilities by label, when asked with "return".',
            },
        },
    }
    comps["PredictRequest"] = {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "inputs": {
                "oneOf": [
                    {"$ref": "#/components/schemas/InputRecord"},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": manifest.serving.max_batch_rows,
                        "items": {"$ref": "#/components/schemas/InputRecord"},
                    },
                ]
            },
            "return": {
                "type": "array",
                "items": {"enum": ["probabilities"]},
                "description": "Extra answers per row: probabilities (class probabilities).",
            },
        },
    }
    comps["BatchResponse"] = {
        "type": "object",
        "required": ["decisions"],
        "properties": {
            "decisions": {"type": "array", "items": {"$ref": "#/components/schemas/Decision"}},
            "rejected": {"type": "array", "items": {"type": "object"}},
        },
    }
    comps["Error"] = _ERROR
    err = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    schema.setdefault("paths", {})["/v1/predict"] = {
        "post": {
            "tags": ["predict"],
            "summary": "Score one row or a batch",
            "description": (
                "Validates the inputs against the data contract, answers with the champion "
                "model and logs every answered row before replying."
            ),
            "operationId": "predict",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "One decision (single row) or a list (batch).",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Decision"},
                                    {"$ref": "#/components/schemas/BatchResponse"},
                                ]
                            }
                        }
                    },
                },
                "400": {"description": "Body is not the expected shape.", "content": err},
                "413": {"description": "Body too large.", "content": err},
                "422": {"description": "Inputs break the contract.", "content": err},
                "500": {"description": "The model failed.", "content": err},
                "503": {"description": "The decision log cannot be written.", "content": err},
            },
        }
    }
    label = _output_schema(manifest)
    key = manifest.contract.key_field
    item: dict[str, Any] = {
        "type": "object",
        "required": ["id", "label"],
        "additionalProperties": False,
        "properties": {"id": {"type": "string", "description": "A decision id."}, "label": label},
    }
    if key is not None:
        item = {
            "oneOf": [
                item,
                {
                    "type": "object",
                    "required": ["key", "label"],
                    "additionalProperties": False,
                    "properties": {
                        "key": {
                            "description": f"A {key}: labels the newest decision carrying it "
                            "within the window (30 days unless within says otherwise)."
                        },
                        "label": label,
                    },
                },
            ]
        }
    comps["FeedbackItem"] = item
    schema["paths"]["/v1/feedback"] = {
        "post": {
            "tags": ["monitoring"],
            "summary": "Ground-truth labels for decisions",
            "description": (
                "One label or a list; each must name a decision of this service and fit the "
                "output spec. A second label for a decision is a new revision. A batch with a "
                "bad item is refused whole."
            ),
            "operationId": "feedback",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/FeedbackItem"},
                                {
                                    "type": "object",
                                    "required": ["feedback"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "feedback": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": manifest.serving.max_feedback_rows,
                                            "items": {"$ref": "#/components/schemas/FeedbackItem"},
                                        },
                                        "within": {
                                            "type": "string",
                                            "description": "Items given by key: how far back "
                                            "the decision may be (e.g. 30d).",
                                        },
                                        "skip_unmatched": {
                                            "type": "boolean",
                                            "description": "Items given by key: store the "
                                            "rest when a key names no decision.",
                                        },
                                    },
                                },
                            ]
                        }
                    }
                },
            },
            "responses": {
                "201": {"description": "Stored: each label's decision id and revision."},
                "400": {"description": "Body is not the expected shape.", "content": err},
                "413": {"description": "Body too large.", "content": err},
                "422": {
                    "description": "A label does not fit (every problem named).",
                    "content": err,
                },
            },
        }
    }
    pushes = [s.name for s in manifest.sources if s.kind == "push"]
    if pushes:
        schema["paths"]["/v1/ingest/{source}"] = {
            "post": {
                "tags": ["data"],
                "summary": "Push rows to a push source",
                "description": (
                    "Rows are checked against the contract (schema changes, every rule), bad "
                    "ones quarantined with reasons, and the good ones used as the source says "
                    "(scored, kept as a dataset version, stored as labels) before the reply. "
                    "The same body pushed again is not taken twice."
                ),
                "operationId": "ingest",
                "parameters": [
                    {
                        "name": "source",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": pushes},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"type": "array", "items": {"type": "object"}},
                                    {
                                        "type": "object",
                                        "required": ["records"],
                                        "properties": {
                                            "records": {
                                                "type": "array",
                                                "items": {"type": "object"},
                                                "maxItems": manifest.serving.max_ingest_rows,
                                            }
                                        },
                                    },
                                ]
                            }
                        },
                        "text/csv": {"schema": {"type": "string"}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "application/vnd.apache.parquet": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": {"description": "Taken: the run, its counts, and answers if scored."},
                    "400": {
                        "description": "Not a push source, or an unreadable body.",
                        "content": err,
                    },
                    "404": {"description": "No such source.", "content": err},
                    "413": {"description": "Body too large.", "content": err},
                    "422": {
                        "description": "Held whole: too many bad rows, or a schema change "
                        "the policy refuses (rows quarantined)."
                    },
                },
            }
        }


def secure_openapi(schema: dict[str, Any]) -> None:
    """Declare bearer authentication, and mark every protected operation with it."""
    from shipway.api.access import OPEN, OPERATIONS, permissions_for

    comps = schema.setdefault("components", {})
    comps.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A Shipway API key (sw_...) or an OIDC access token (JWT).",
    }
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            perms = permissions_for(method.upper(), path.replace("{", "").replace("}", "x"))
            if perms is None or not (OPEN in perms or OPERATIONS in perms):
                op["security"] = [{"bearer": []}]
                op.setdefault("responses", {}).setdefault(
                    "401", {"description": "No credentials, or they are not valid."}
                )
                op["responses"].setdefault(
                    "403", {"description": "Valid credentials without the role this needs."}
                )


__all__ = ["ingress_openapi", "secure_openapi"]

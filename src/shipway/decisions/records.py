"""Decision rows: every row the decision log holds is built here, in one shape.

The predict path builds a row for a model's answer (on the runner thread, with the rest of its
model batch), for a fallback or a stopped service's answer, and for a failed row; shadows build
their own rows. Personal fields are treated (``redact``) here, after the model saw the clear
values and before anything is stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Redact = Callable[[dict[str, Any]], dict[str, Any]]

#: How a decision's reason says a model's answer for its row could not be used, so the row
#: fell back (``v1: invalid answer: ...``); the monitor counts these (``invalid_answer_rate``).
INVALID_ANSWER = ": invalid answer: "


def decision_row(
    decision_id: str,
    ts: float,
    service: str,
    version: int | None,
    route: str,
    inputs: dict[str, Any],
    output: Any,
    confidence: Any,
    latency_ms: float,
    caller: str | None,
    *,
    reason: str | None = None,
    error: str | None = None,
    cost: float | None = None,
    tokens: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One decision: answered (``output`` set) or failed (``error`` set, no output);
    ``tokens`` are the prompt and completion tokens a model endpoint billed for it."""
    return {
        "id": decision_id,
        "ts": ts,
        "service": service,
        "model_version": version,
        "route": route,
        "inputs": inputs,
        "output": output,
        "confidence": confidence,
        "latency_ms": latency_ms,
        "caller": caller,
        "reason": reason,
        "error": error,
        "cost": cost,
        "prompt_tokens": tokens[0] if tokens is not None else None,
        "completion_tokens": tokens[1] if tokens is not None else None,
    }


def key_text(v: Any) -> str | None:
    """A label key as the log keeps it and looks it up: a whole float as its integer
    (``42.0`` and ``"42"`` are one customer), no NUL characters, at most 128 characters;
    ``None`` for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).replace("\x00", "\ufffd")[:128]


def _clean(v: Any) -> Any:
    return v.replace("\x00", "\ufffd") if isinstance(v, str) else v


def rejection_rows(
    request_id: str,
    ts: float,
    service: str,
    caller: str | None,
    violations: Sequence[dict[str, Any]],
    fields: frozenset[str],
    treat: Callable[[str, Any], Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per contract violation of a refused request. A value is kept only for a field
    the contract has (treated as the log treats personal fields), at most 200 characters; a
    value sent under a name the contract does not know is never stored. Text loses NUL
    characters, which PostgreSQL cannot store."""
    import orjson

    out = []
    for v in violations:
        name = v.get("field")
        value = None
        if name in fields and v.get("value") is not None:
            raw = treat(name, v["value"]) if treat is not None else v["value"]
            value = None if raw is None else orjson.dumps(raw, default=str).decode()[:200]
        out.append(
            {
                "ts": ts,
                "service": service,
                "request_id": request_id,
                "caller": caller,
                "row": v.get("row"),
                "field": None if name is None else _clean(str(name)[:128]),
                "rule": _clean(str(v.get("rule"))[:32]),
                "value": value,
                "expected": None if v.get("expected") is None else _clean(str(v["expected"])[:500]),
            }
        )
    return out


def shadow_rows(
    ids: Sequence[str],
    ts: float,
    service: str,
    version: int | None,
    outputs: Sequence[Any] | None,
    confidence: Sequence[Any] | None,
    latency_ms: float,
    error: str | None,
    cost: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """A shadow version's answers (or its one error) for the decisions it shadowed, with what
    each shadow call cost (a model endpoint's token prices)."""
    if outputs is None or confidence is None:
        return [
            {
                "decision_id": did,
                "ts": ts,
                "service": service,
                "model_version": version,
                "output": None,
                "confidence": None,
                "latency_ms": latency_ms,
                "error": error,
            }
            for did in ids
        ]
    return [
        {
            "decision_id": did,
            "ts": ts,
            "service": service,
            "model_version": version,
            "output": o,
            "confidence": c,
            "latency_ms": latency_ms,
            "error": None,
            "cost": spent,
        }
        for did, o, c, spent in zip(
            ids, outputs, confidence, cost if cost is not None else [None] * len(ids), strict=True
        )
    ]


__all__ = [
    "INVALID_ANSWER",
    "Redact",
    "decision_row",
    "key_text",
    "rejection_rows",
    "shadow_rows",
]

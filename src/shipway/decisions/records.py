"""Decision rows: every row the decision log holds is built here, in one shape.

The predict path builds a row for a model's answer (on the runner thread, with the rest of its
model batch), for a fallback or a stopped service's answer, and for a failed row; shadows build
their own rows. Personal fields are treated (``redact``) here, after the model saw the clear
values and before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Redact = Callable[[dict[str, Any]], dict[str, Any]]


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
) -> dict[str, Any]:
    """One decision: answered (``output`` set) or failed (``error`` set, no output)."""
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
    }


def shadow_rows(
    ids: Sequence[str],
    ts: float,
    service: str,
    version: int | None,
    outputs: Sequence[Any] | None,
    confidence: Sequence[Any] | None,
    latency_ms: float,
    error: str | None,
) -> list[dict[str, Any]]:
    """A shadow version's answers (or its one error) for the decisions it shadowed."""
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
        }
        for did, o, c in zip(ids, outputs, confidence, strict=True)
    ]


__all__ = ["Redact", "decision_row", "shadow_rows"]

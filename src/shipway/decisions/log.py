"""The decision log's writers: every answered row, committed before the caller hears it.

Rows are built by :func:`shipway.decisions.records.decision_row` (and ``shadow_row``) and
committed by the group-commit writer of ``store/writer.py``. Reading the log is
``shipway.decisions.queries``; nothing else in Shipway queries these tables.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from sqlalchemy import Engine

from shipway.decisions.records import key_text
from shipway.store.tables import decisions, rejections, shadow_decisions
from shipway.store.writer import GroupCommitWriter

DecisionRow = dict[str, Any]
"""Keys: id, ts, service, model_version, route, inputs (dict), output, confidence,
latency_ms, caller; optional: error (set for a failed row), reason (why earlier steps of the
guard chain failed, for fallback answers), cost."""

_dumps = orjson.dumps

_DECISION_COLUMNS = (
    "id",
    "ts",
    "service",
    "model_version",
    "route",
    "inputs",
    "output",
    "confidence",
    "latency_ms",
    "caller",
    "error",
    "reason",
    "cost",
    "label_key",
    "prompt_tokens",
    "completion_tokens",
)
_SHADOW_COLUMNS = (
    "decision_id",
    "ts",
    "service",
    "model_version",
    "output",
    "confidence",
    "latency_ms",
    "error",
    "cost",
)


def _decision_params(r: DecisionRow, key_field: str | None = None) -> tuple[Any, ...]:
    key = r["inputs"].get(key_field) if key_field is not None else None
    return (
        r["id"],
        r["ts"],
        r["service"],
        r["model_version"],
        r["route"],
        _dumps(r["inputs"]).decode(),
        _dumps(r["output"]).decode(),
        r["confidence"],
        r["latency_ms"],
        r.get("caller"),
        r.get("error"),
        r.get("reason"),
        r.get("cost"),
        key_text(key),
        r.get("prompt_tokens"),
        r.get("completion_tokens"),
    )


def _shadow_params(r: dict[str, Any]) -> tuple[Any, ...]:
    out = r.get("output")
    return (
        r["decision_id"],
        r["ts"],
        r["service"],
        r["model_version"],
        None if out is None and r.get("error") else _dumps(out).decode(),
        r.get("confidence"),
        r.get("latency_ms"),
        r.get("error"),
        r.get("cost"),
    )


class DecisionLog(GroupCommitWriter):
    """Every decision (answered, or failed with ``error`` set), committed before replying.

    With ``key_field`` (the contract's first ``role: id`` field), each row also carries that
    field's value as the log holds it, the key labels can be joined on."""

    def __init__(
        self, engine: Engine, *, max_batch: int = 512, key_field: str | None = None
    ) -> None:
        super().__init__(
            engine,
            decisions,
            _DECISION_COLUMNS,
            functools.partial(_decision_params, key_field=key_field),
            max_batch=max_batch,
            what="decision",
            noun="decisions",
        )


def _rejection_params(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r["ts"],
        r["service"],
        r["request_id"],
        r.get("caller"),
        r.get("row"),
        r.get("field"),
        r["rule"],
        r.get("value"),
        r.get("expected"),
    )


class RejectionLog(GroupCommitWriter):
    """Rows the contract refused, one row per violation (see ``records.rejection_rows``)."""

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(
            engine,
            rejections,
            (
                "ts",
                "service",
                "request_id",
                "caller",
                "row_index",
                "field",
                "rule",
                "value",
                "expected",
            ),
            _rejection_params,
            max_batch=max_batch,
            what="rejection",
            noun="rows",
        )


class ShadowLog(GroupCommitWriter):
    """Answers of shadow versions, keyed by the decision they shadowed."""

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(
            engine,
            shadow_decisions,
            _SHADOW_COLUMNS,
            _shadow_params,
            max_batch=max_batch,
            what="shadow decision",
            noun="rows",
        )


__all__ = ["DecisionLog", "DecisionRow", "RejectionLog", "ShadowLog"]

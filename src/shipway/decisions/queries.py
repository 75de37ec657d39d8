"""Every read of the decision log, and its purge: the one module that queries the tables
``decisions``, ``shadow_decisions`` and ``rejections``.

Monitor windows, canary figures, shadow agreement, id lookups, the review join, exports and
retention all call these functions instead of writing SQL against the tables, so a change to
how decisions are stored (a column, an index, a JSON encoding) has one home. JSON columns are
decoded here, in :func:`_decode`, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Select, delete, desc, func, select

from shipway.store.tables import decisions, rejections, shadow_decisions

_loads = orjson.loads


def _decode(row: Any) -> dict[str, Any]:
    d = {str(k): v for k, v in row.items()}
    d.pop("seq", None)
    d.pop("label_key", None)  # an index column: the value is in the inputs
    if "inputs" in d:
        d["inputs"] = _loads(d["inputs"])
    if "output" in d:
        d["output"] = _loads(d["output"]) if d["output"] is not None else None
    return d


def get(engine: Engine, decision_id: str) -> dict[str, Any] | None:
    """One decision by id, or None."""
    with engine.connect() as conn:
        row = (
            conn.execute(select(decisions).where(decisions.c.id == decision_id)).mappings().first()
        )
    return _decode(row) if row is not None else None


def view(conn: Connection, decision_id: str) -> dict[str, Any] | None:
    """What a reviewer sees of a decision: inputs, output, confidence, version, route, time."""
    row = (
        conn.execute(
            select(
                decisions.c.inputs,
                decisions.c.output,
                decisions.c.confidence,
                decisions.c.model_version,
                decisions.c.route,
                decisions.c.ts,
            ).where(decisions.c.id == decision_id)
        )
        .mappings()
        .first()
    )
    return _decode(row) if row is not None else None


def iter_decisions(
    engine: Engine,
    *,
    service: str | None = None,
    since: float | None = None,
    until: float | None = None,
    chunk: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Every logged decision in commit order, read in chunks (constant memory)."""
    last = 0
    while True:
        q = select(decisions).where(decisions.c.seq > last)
        if service is not None:
            q = q.where(decisions.c.service == service)
        if since is not None:
            q = q.where(decisions.c.ts >= since)
        if until is not None:
            q = q.where(decisions.c.ts < until)
        q = q.order_by(decisions.c.seq).limit(chunk)
        with engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        if not rows:
            return
        last = rows[-1]["seq"]
        for r in rows:
            yield _decode(r)


def known_ids(conn: Connection, service: str, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` are decisions of ``service``."""
    ids = list(ids)
    known: set[str] = set()
    for k in range(0, len(ids), 500):
        chunk = ids[k : k + 500]
        known.update(
            conn.execute(
                select(decisions.c.id).where(
                    decisions.c.service == service, decisions.c.id.in_(chunk)
                )
            ).scalars()
        )
    return known


def answers(engine: Engine, service: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The logged answer of each of ``ids`` that is in the log (id, output, confidence,
    version, route), as the predict path returns them."""
    ids = list(ids)
    out: dict[str, dict[str, Any]] = {}
    cols = (
        decisions.c.id,
        decisions.c.output,
        decisions.c.confidence,
        decisions.c.model_version,
        decisions.c.route,
    )
    with engine.connect() as conn:
        for k in range(0, len(ids), 500):
            q = select(*cols).where(
                decisions.c.service == service, decisions.c.id.in_(ids[k : k + 500])
            )
            for r in conn.execute(q).mappings():
                d = _decode(r)
                out[d["id"]] = d
    return out


def answered_among(
    engine: Engine, service: str, since: float, among: Select[Any], limit: int | None = None
) -> list[dict[str, Any]]:
    """Answered decisions since ``since`` whose id is in ``among`` (a select of ids), newest
    first, at most ``limit``: id, time, inputs as logged, model version."""
    q = (
        select(decisions.c.id, decisions.c.ts, decisions.c.inputs, decisions.c.model_version)
        .where(
            decisions.c.service == service,
            decisions.c.ts >= since,
            decisions.c.error.is_(None),
            decisions.c.id.in_(among),
        )
        .order_by(desc(decisions.c.ts))
    )
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        return [
            {"id": r[0], "ts": r[1], "inputs": _loads(r[2]), "model_version": r[3]}
            for r in conn.execute(q)
        ]


def callers(conn: Connection, ids: Iterable[str]) -> dict[str, str | None]:
    """The caller logged with each of ``ids``."""
    ids = list(ids)
    out: dict[str, str | None] = {}
    for k in range(0, len(ids), 500):
        chunk = ids[k : k + 500]
        out.update(
            conn.execute(
                select(decisions.c.id, decisions.c.caller).where(decisions.c.id.in_(chunk))
            ).all()
        )
    return out


_WINDOW_COLUMNS = (
    decisions.c.id,
    decisions.c.ts,
    decisions.c.model_version,
    decisions.c.route,
    decisions.c.inputs,
    decisions.c.output,
    decisions.c.confidence,
    decisions.c.latency_ms,
    decisions.c.error,
    decisions.c.cost,
    decisions.c.reason,
    decisions.c.prompt_tokens,
    decisions.c.completion_tokens,
)


def window(
    engine: Engine,
    service: str,
    *,
    end: float,
    start: float | None = None,
    last: int | None = None,
) -> list[dict[str, Any]]:
    """The decisions of a monitor window, oldest first: those in ``[start, end)``, or the
    ``last`` ones logged at or before ``end``."""
    q = select(*_WINDOW_COLUMNS).where(decisions.c.service == service)
    if last is not None:
        q = q.where(decisions.c.ts <= end).order_by(desc(decisions.c.seq)).limit(last)
    else:
        q = q.where(decisions.c.ts >= (start or 0.0), decisions.c.ts < end)
        q = q.order_by(decisions.c.seq)
    with engine.connect() as conn:
        rows = [_decode(r) for r in conn.execute(q).mappings()]
    if last is not None:
        rows.reverse()
    return rows


@dataclass(frozen=True)
class CanaryFigures:
    """What a canary's decisions since a time say: how many, how many failed, how fast."""

    requests: int
    errors: int
    latencies_ms: list[float]


def canary_figures(
    engine: Engine, service: str, version: int, since: float, *, latencies: int = 100_000
) -> CanaryFigures:
    base = (
        decisions.c.service == service,
        decisions.c.model_version == version,
        decisions.c.route == "canary",
        decisions.c.ts >= since,
    )
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).where(*base)).scalar() or 0)
        errors = int(
            conn.execute(select(func.count()).where(*base, decisions.c.error.is_not(None))).scalar()
            or 0
        )
        lat = (
            conn.execute(
                select(decisions.c.latency_ms)
                .where(*base)
                .order_by(decisions.c.ts.desc())
                .limit(latencies)
            )
            .scalars()
            .all()
        )
    return CanaryFigures(n, errors, [float(x) for x in lat])


@dataclass(frozen=True)
class ShadowPair:
    """A shadow version's answer beside the answer the caller got."""

    served: Any
    shadow: Any
    error: str | None


def shadow_cost(engine: Engine, service: str, start: float, end: float) -> float:
    """What shadow calls in ``[start, end)`` cost (model endpoints' token prices)."""
    q = select(func.sum(shadow_decisions.c.cost)).where(
        shadow_decisions.c.service == service,
        shadow_decisions.c.ts >= start,
        shadow_decisions.c.ts < end,
    )
    with engine.connect() as conn:
        return float(conn.execute(q).scalar() or 0.0)


def shadow_pairs(engine: Engine, service: str, version: int, limit: int) -> list[ShadowPair]:
    """The newest ``limit`` answers of shadow ``version``, each with the served answer."""
    j = shadow_decisions.join(decisions, decisions.c.id == shadow_decisions.c.decision_id)
    q = (
        select(decisions.c.output, shadow_decisions.c.output, shadow_decisions.c.error)
        .select_from(j)
        .where(shadow_decisions.c.service == service, shadow_decisions.c.model_version == version)
        .order_by(shadow_decisions.c.seq.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [
        ShadowPair(_loads(a) if a is not None else None, _loads(b) if b is not None else None, err)
        for a, b, err in rows
    ]


def latest_by_key(
    conn: Connection, service: str, keys: Iterable[str], since: float, caller: str | None = None
) -> dict[str, str]:
    """For each key (the value of the contract's id field, as the log holds it), the id of the
    newest answered decision of ``service`` logged at or after ``since`` that carries it (a
    failed decision has no answer to score); with ``caller``, only that caller's decisions."""
    keys = list(dict.fromkeys(keys))
    best: dict[str, tuple[float, int, str]] = {}
    for k in range(0, len(keys), 500):
        chunk = keys[k : k + 500]
        q = select(decisions.c.label_key, decisions.c.ts, decisions.c.seq, decisions.c.id).where(
            decisions.c.service == service,
            decisions.c.label_key.in_(chunk),
            decisions.c.ts >= since,
            decisions.c.error.is_(None),
        )
        if caller is not None:
            q = q.where(decisions.c.caller == caller)
        for key, ts, seq, did in conn.execute(q):
            if key not in best or (ts, seq) > best[key][:2]:
                best[key] = (ts, seq, did)
    return {key: v[2] for key, v in best.items()}


def rejection_figures(engine: Engine, service: str, start: float, end: float) -> dict[str, Any]:
    """Refused requests in ``[start, end)``: how many requests and rows, and the violations by
    ``field:rule`` (a field the contract does not know counts as ``(unknown)``)."""
    q = select(
        rejections.c.request_id, rejections.c.row_index, rejections.c.field, rejections.c.rule
    ).where(rejections.c.service == service, rejections.c.ts >= start, rejections.c.ts < end)
    requests: set[str] = set()
    rows: set[tuple[str, Any]] = set()
    by: dict[str, int] = {}
    with engine.connect() as conn:
        for rid, row, field, rule in conn.execute(q):
            requests.add(rid)
            rows.add((rid, row))
            name = "(unknown)" if rule == "unknown_field" else field or "(row)"
            key = f"{name}:{rule}"
            by[key] = by.get(key, 0) + 1
    return {"requests": len(requests), "rows": len(rows), "violations": by}


def newest_answered(
    conn: Connection, service: str, limit: int, *, exclude: Select[Any] | None = None
) -> list[str]:
    """Ids of the newest answered (not failed) decisions, minus those ``exclude`` selects."""
    q = select(decisions.c.id).where(decisions.c.service == service, decisions.c.error.is_(None))
    if exclude is not None:
        q = q.where(decisions.c.id.not_in(exclude))
    return list(conn.execute(q.order_by(decisions.c.seq.desc()).limit(limit)).scalars())


def purge(
    conn: Connection,
    service: str,
    *,
    decisions_before: float | None = None,
    shadows_before: float | None = None,
) -> dict[str, int]:
    """Delete decisions (and refused requests) and shadow answers logged before the given times
    (in ``conn``'s transaction, so the caller can record the purge beside it)."""
    removed: dict[str, int] = {}
    for name, table, cutoff in (
        ("decisions", decisions, decisions_before),
        ("rejections", rejections, decisions_before),
        ("shadow_decisions", shadow_decisions, shadows_before),
    ):
        if cutoff is None:
            continue
        res = conn.execute(delete(table).where(table.c.service == service, table.c.ts < cutoff))
        removed[name] = int(res.rowcount or 0)
    return removed


__all__ = [
    "CanaryFigures",
    "ShadowPair",
    "answered_among",
    "answers",
    "callers",
    "canary_figures",
    "get",
    "iter_decisions",
    "known_ids",
    "latest_by_key",
    "newest_answered",
    "purge",
    "rejection_figures",
    "shadow_pairs",
    "view",
    "window",
]

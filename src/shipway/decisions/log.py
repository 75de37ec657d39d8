"""The decision log: every answered row, committed before the caller hears the answer.

Writers on the request path ``await log.write(rows)``; a dedicated thread gathers what every
concurrent request queued and commits it in one transaction (group commit), then wakes them.
No answer leaves the server before its decision is committed, so an acknowledged prediction
cannot be missing from the log, even if the process is killed right after replying.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from sqlalchemy import Engine, select

from shipway.concurrency import BatchWorker
from shipway.errors import StoreError
from shipway.store.tables import decisions

DecisionRow = dict[str, Any]
"""Keys: id, ts, service, model_version, route, inputs (dict), output, confidence,
latency_ms, caller; optional: error (set for a failed row), reason (why earlier steps of the
guard chain failed, for fallback answers), cost."""

_RETRIES = 5


_dumps = orjson.dumps


class GroupCommitWriter:
    """Commits rows queued by many concurrent callers in shared transactions.

    It holds one database connection of its own and inserts with ``executemany``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        table: str,
        columns: tuple[str, ...],
        to_params: Callable[[dict[str, Any]], tuple[Any, ...]],
        max_batch: int = 512,
    ) -> None:
        self.engine = engine
        self.table = table
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )
        self._to_params = to_params
        self._raw: Any = None
        self._lock = threading.Lock()
        self._worker: BatchWorker[list[dict[str, Any]], None] = BatchWorker(
            self._commit, name=f"shipway-{table}-writer", max_items=max_batch, weight=len
        )
        self.committed = 0

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """Commit everything queued, then stop the writer and release its connection."""
        self._worker.stop()
        with self._lock:
            self._close()

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Return once ``rows`` are committed (raises StoreError if they could not be)."""
        await self._worker.submit(rows)

    def write_sync(self, rows: list[dict[str, Any]]) -> None:
        self._commit([rows])

    @property
    def group_commits(self) -> int:
        return self._worker.batches

    def _close(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None

    def _commit(self, batches: list[list[dict[str, Any]]]) -> list[None]:
        to_params = self._to_params
        params = [to_params(r) for rows in batches for r in rows]
        delay = 0.01
        with self._lock:
            for attempt in range(_RETRIES):
                try:
                    if self._raw is None:
                        self._raw = self.engine.raw_connection()
                    cur = self._raw.cursor()
                    try:
                        cur.executemany(self._sql, params)
                    finally:
                        cur.close()
                    self._raw.commit()
                    self.committed += len(params)
                    return [None] * len(batches)
                except Exception as exc:  # DBAPI errors differ by driver
                    with contextlib.suppress(Exception):
                        self._raw.rollback()
                    self._close()
                    if attempt == _RETRIES - 1 or _is_permanent(exc):
                        first = str(exc).splitlines()[0] if str(exc) else ""
                        raise StoreError(
                            f"the {self.table.replace('_', ' ')} log could not commit "
                            f"{len(params)} decisions: {type(exc).__name__}: {first}"
                        ) from None
                    time.sleep(delay)
                    delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover


def _decision_params(r: DecisionRow) -> tuple[Any, ...]:
    return (
        r["id"], r["ts"], r["service"], r["model_version"], r["route"],
        _dumps(r["inputs"]).decode(), _dumps(r["output"]).decode(), r["confidence"],
        r["latency_ms"], r.get("caller"), r.get("error"), r.get("reason"), r.get("cost"),
    )  # fmt: skip


class DecisionLog(GroupCommitWriter):
    """Every decision (answered, or failed with ``error`` set), committed before replying."""

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(
            engine,
            table="decisions",
            columns=("id", "ts", "service", "model_version", "route", "inputs", "output",
                     "confidence", "latency_ms", "caller", "error", "reason", "cost"),
            to_params=_decision_params,
            max_batch=max_batch,
        )  # fmt: skip


def _shadow_params(r: dict[str, Any]) -> tuple[Any, ...]:
    out = r.get("output")
    return (
        r["decision_id"], r["ts"], r["service"], r["model_version"],
        None if out is None and r.get("error") else _dumps(out).decode(),
        r.get("confidence"), r.get("latency_ms"), r.get("error"),
    )  # fmt: skip


class ShadowLog(GroupCommitWriter):
    """Answers of shadow versions, keyed by the decision they shadowed."""

    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(
            engine,
            table="shadow_decisions",
            columns=("decision_id", "ts", "service", "model_version", "output", "confidence",
                     "latency_ms", "error"),
            to_params=_shadow_params,
            max_batch=max_batch,
        )  # fmt: skip


def _is_permanent(exc: Exception) -> bool:
    """Constraint violations do not heal by retrying; lost connections and locks may."""
    name = type(exc).__name__
    return name in ("IntegrityError", "UniqueViolation", "ProgrammingError", "DataError")


def _decode(row: Any) -> dict[str, Any]:
    d = {str(k): v for k, v in row.items()}
    d.pop("seq", None)
    d["inputs"] = orjson.loads(d["inputs"])
    d["output"] = orjson.loads(d["output"]) if d["output"] is not None else None
    return d


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
        for r in rows:
            yield _decode(r)
        last = rows[-1]["seq"]


def get_decision(engine: Engine, decision_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(select(decisions).where(decisions.c.id == decision_id)).mappings().first()
        )
    return _decode(row) if row is not None else None


__all__ = [
    "DecisionLog",
    "DecisionRow",
    "GroupCommitWriter",
    "ShadowLog",
    "get_decision",
    "iter_decisions",
]

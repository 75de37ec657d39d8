"""The one owner of ``source_runs``, ``source_files`` and ``quarantine``: what each source
took, what became of it, and the rows it could not use."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, desc, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipway.store.tables import quarantine, source_files, source_runs


def _plain(row: Any) -> dict[str, Any]:
    """A result row as a dict with plain ``str`` keys (JSON encoders refuse subclasses)."""
    return {str(k): v for k, v in row.items()}


def start_run(engine: Engine, run_id: str, service: str, source: str, actor: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(source_runs).values(
                id=run_id,
                service=service,
                source=source,
                started_at=time.time(),
                status="running",
                files=0,
                rows_in=0,
                rows_good=0,
                rows_bad=0,
                actor=actor,
            )
        )


def finish_run(
    engine: Engine,
    run_id: str,
    *,
    status: str,
    files: int,
    rows_in: int,
    rows_good: int,
    rows_bad: int,
    error: str | None = None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(source_runs)
            .where(source_runs.c.id == run_id)
            .values(
                finished_at=time.time(),
                status=status,
                files=files,
                rows_in=rows_in,
                rows_good=rows_good,
                rows_bad=rows_bad,
                error=error,
            )
        )


def taken(engine: Engine, service: str, source: str) -> set[str]:
    """The contents (sha256) this source has taken, whatever became of them."""
    q = select(source_files.c.sha256).where(
        source_files.c.service == service, source_files.c.source == source
    )
    with engine.connect() as conn:
        return set(conn.execute(q).scalars())


def reserve(
    engine: Engine, *, service: str, source: str, run_id: str, path: str, sha256: str, size: int
) -> bool:
    """Claim a file's content for this run before anything is scored (``taking``); False if
    another run (a server's schedule, a CLI run) has it already: one content, one run."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(source_files).values(
                    service=service, source=source, path=path, sha256=sha256, size=size,
                    run_id=run_id, ts=time.time(), status="taking",
                    rows_in=0, rows_good=0, rows_bad=0,
                )
            )  # fmt: skip
    except IntegrityError:
        return False
    return True


def record_file(
    conn: Connection,
    *,
    service: str,
    source: str,
    sha256: str,
    status: str,
    rows_in: int = 0,
    rows_good: int = 0,
    rows_bad: int = 0,
    sink: str | None = None,
    error: str | None = None,
) -> None:
    """What became of a reserved file (in the transaction that keeps its quarantined rows)."""
    conn.execute(
        update(source_files)
        .where(
            source_files.c.service == service,
            source_files.c.source == source,
            source_files.c.sha256 == sha256,
        )
        .values(
            ts=time.time(),
            status=status,
            rows_in=rows_in,
            rows_good=rows_good,
            rows_bad=rows_bad,
            sink=sink,
            error=error,
        )
    )


def purge(conn: Connection, service: str, before: float) -> int:
    """Quarantined rows older than ``before`` (the decisions' retention)."""
    res = conn.execute(
        delete(quarantine).where(quarantine.c.service == service, quarantine.c.ts < before)
    )
    return int(res.rowcount or 0)


def hold_rows(
    conn: Connection,
    *,
    service: str,
    source: str,
    run_id: str,
    file: str,
    rows: Sequence[tuple[int, dict[str, Any], list[dict[str, Any]]]],
) -> None:
    """Quarantine rows: (row index in the file, the row as the log would keep it, the rules
    it broke)."""
    if not rows:
        return
    now = time.time()
    conn.execute(
        insert(quarantine),
        [
            {
                "service": service,
                "source": source,
                "run_id": run_id,
                "file": file,
                "row_index": index,
                "ts": now,
                "row": orjson.dumps(row, default=str).decode(),
                "violations": orjson.dumps(reasons, default=str).decode(),
                "status": "held",
            }
            for index, row, reasons in rows
        ],
    )


def quarantined(
    engine: Engine, service: str, source: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest quarantined rows, with their reasons."""
    q = select(quarantine).where(quarantine.c.service == service)
    if source is not None:
        q = q.where(quarantine.c.source == source)
    q = q.order_by(desc(quarantine.c.seq)).limit(limit)
    with engine.connect() as conn:
        out = []
        for r in conn.execute(q).mappings():
            d = _plain(r)
            d["row"] = orjson.loads(d["row"])
            d["violations"] = orjson.loads(d["violations"])
            out.append(d)
        return out


def freshness(
    engine: Engine, service: str, sources: Sequence[str], start: float, end: float
) -> dict[str, dict[str, Any]]:
    """Per source: when it last scored a file, when it first ran, and how many files failed or
    were held in ``[start, end)``."""
    out: dict[str, dict[str, Any]] = {
        s: {"last_scored_at": None, "first_run_at": None, "ingest_failures": 0} for s in sources
    }
    if not out:
        return out
    with engine.connect() as conn:
        scored = select(source_files.c.source, func.max(source_files.c.ts)).where(
            source_files.c.service == service, source_files.c.status == "scored"
        )
        for source, ts in conn.execute(scored.group_by(source_files.c.source)):
            if source in out:
                out[source]["last_scored_at"] = ts
        first = select(source_runs.c.source, func.min(source_runs.c.started_at)).where(
            source_runs.c.service == service
        )
        for source, ts in conn.execute(first.group_by(source_runs.c.source)):
            if source in out:
                out[source]["first_run_at"] = ts
        failed = select(source_files.c.source, func.count()).where(
            source_files.c.service == service,
            source_files.c.status.in_(("failed", "held")),
            source_files.c.ts >= start,
            source_files.c.ts < end,
        )
        for source, n in conn.execute(failed.group_by(source_files.c.source)):
            if source in out:
                out[source]["ingest_failures"] = int(n)
    return out


def runs(
    engine: Engine, service: str, source: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The newest runs, with the files each took."""
    q = select(source_runs).where(source_runs.c.service == service)
    if source is not None:
        q = q.where(source_runs.c.source == source)
    q = q.order_by(desc(source_runs.c.started_at)).limit(limit)
    with engine.connect() as conn:
        found = [_plain(r) for r in conn.execute(q).mappings()]
        ids = [r["id"] for r in found]
        files: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            fq = (
                select(source_files)
                .where(source_files.c.run_id.in_(ids))
                .order_by(source_files.c.seq)
            )
            for f in conn.execute(fq).mappings():
                d = _plain(f)
                d.pop("seq", None)
                files[d["run_id"]].append(d)
    for r in found:
        r["files_taken"] = files[r["id"]]
    return found


__all__ = [
    "finish_run",
    "freshness",
    "hold_rows",
    "purge",
    "quarantined",
    "record_file",
    "reserve",
    "runs",
    "start_run",
    "taken",
]

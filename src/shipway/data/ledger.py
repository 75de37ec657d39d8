"""The one owner of ``source_runs``, ``source_files`` and ``quarantine``: what each source
took, what became of it, and the rows it could not use."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, desc, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipway.store.tables import quarantine, source_cursors, source_files, source_runs


def _plain(row: Any) -> dict[str, Any]:
    """A result row as a dict with plain ``str`` keys (JSON encoders refuse subclasses)."""
    return {str(k): v for k, v in row.items()}


def start_run(
    engine: Engine, run_id: str, service: str, source: str, actor: str, owner: str
) -> None:
    now = time.time()
    with engine.begin() as conn:
        conn.execute(
            insert(source_runs).values(
                id=run_id,
                service=service,
                source=source,
                started_at=now,
                status="running",
                files=0,
                rows_in=0,
                rows_good=0,
                rows_bad=0,
                actor=actor,
                owner=owner,
                beat_at=now,
            )
        )


def beat(engine: Engine, run_id: str) -> None:
    """The run is alive (a long run says so between batches)."""
    with engine.begin() as conn:
        conn.execute(
            update(source_runs).where(source_runs.c.id == run_id).values(beat_at=time.time())
        )


def open_claims(engine: Engine, service: str, source: str) -> list[dict[str, Any]]:
    """Batches still ``taking``, with the state of the run that claimed them (its status,
    owner and last beat): the caller decides which were abandoned."""
    q = (
        select(
            source_files,
            source_runs.c.status.label("run_status"),
            source_runs.c.owner,
            source_runs.c.beat_at,
        )
        .join(source_runs, source_runs.c.id == source_files.c.run_id, isouter=True)
        .where(
            source_files.c.service == service,
            source_files.c.source == source,
            source_files.c.status == "taking",
        )
        .order_by(source_files.c.seq)
    )
    with engine.connect() as conn:
        return [_plain(r) for r in conn.execute(q).mappings()]


def take_over(engine: Engine, seq: int, old_run: str, new_run: str) -> bool:
    """Move an abandoned claim to this run; False if another run took it first."""
    with engine.begin() as conn:
        res = conn.execute(
            update(source_files)
            .where(
                source_files.c.seq == seq,
                source_files.c.run_id == old_run,
                source_files.c.status == "taking",
            )
            .values(run_id=new_run)
        )
        return bool(res.rowcount)


def cursor(engine: Engine, service: str, source: str) -> tuple[Any, list[Any]]:
    """Where a SQL source has read up to: the cursor value and the keys taken at it."""
    q = select(source_cursors.c.cursor, source_cursors.c.boundary).where(
        source_cursors.c.service == service, source_cursors.c.source == source
    )
    with engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        return None, []
    return (orjson.loads(row[0]) if row[0] is not None else None), orjson.loads(row[1])


def _move_cursor(
    conn: Connection, service: str, source: str, position: tuple[Any, list[Any]]
) -> None:
    value, boundary = position
    values = {
        "cursor": orjson.dumps(value).decode(),
        "boundary": orjson.dumps(boundary).decode(),
        "updated_at": time.time(),
    }
    res = conn.execute(
        update(source_cursors)
        .where(source_cursors.c.service == service, source_cursors.c.source == source)
        .values(**values)
    )
    if not res.rowcount:
        conn.execute(insert(source_cursors).values(service=service, source=source, **values))


def move_cursor(engine: Engine, service: str, source: str, position: tuple[Any, list[Any]]) -> None:
    with engine.begin() as conn:
        _move_cursor(conn, service, source, position)


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
    engine: Engine,
    *,
    service: str,
    source: str,
    run_id: str,
    path: str,
    sha256: str,
    size: int,
    claimed_at: float,
    staged: str | None = None,
    cursor_from: Any = None,
    cursor_to: Any = None,
    position: tuple[Any, list[Any]] | None = None,
    held: Sequence[tuple[int, dict[str, Any], list[dict[str, Any]]]] = (),
) -> bool:
    """Claim a batch's content for this run before anything uses it (``taking``); False if
    another run (a server's schedule, a CLI run) has it already: one content, one run.

    ``position``: a SQL source's cursor after this batch, moved in the claim's transaction,
    so the cursor never passes rows that no claim holds. ``held``: parts of the batch that are
    not rows at all, quarantined with the claim (a stream's unreadable messages)."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(source_files).values(
                    service=service, source=source, path=path, sha256=sha256, size=size,
                    run_id=run_id, ts=claimed_at, status="taking",
                    rows_in=0, rows_good=0, rows_bad=0, claimed_at=claimed_at, staged=staged,
                    cursor_from=None if cursor_from is None else orjson.dumps(cursor_from).decode(),
                    cursor_to=None if cursor_to is None else orjson.dumps(cursor_to).decode(),
                )
            )  # fmt: skip
            if position is not None:
                _move_cursor(conn, service, source, position)
            hold_rows(conn, service=service, source=source, run_id=run_id, file=path, rows=held)
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
    schema_diff: list[dict[str, Any]] | None = None,
) -> None:
    """What became of a reserved batch (in the transaction that keeps its quarantined rows)."""
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
            schema_diff=orjson.dumps(schema_diff).decode() if schema_diff else None,
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


def held(
    engine: Engine, service: str, source: str, seqs: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Rows of ``source`` still held (all, or those numbered ``seqs``), oldest first."""
    q = select(quarantine).where(
        quarantine.c.service == service,
        quarantine.c.source == source,
        quarantine.c.status == "held",
    )
    if seqs is not None:
        q = q.where(quarantine.c.seq.in_(list(seqs)))
    with engine.connect() as conn:
        out = []
        for r in conn.execute(q.order_by(quarantine.c.seq)).mappings():
            d = _plain(r)
            d["row"] = orjson.loads(d["row"])
            d["violations"] = orjson.loads(d["violations"])
            out.append(d)
        return out


def one_held(engine: Engine, service: str, seq: int) -> dict[str, Any] | None:
    """One quarantined row by number, whatever its status."""
    with engine.connect() as conn:
        r = (
            conn.execute(
                select(quarantine).where(quarantine.c.service == service, quarantine.c.seq == seq)
            )
            .mappings()
            .first()
        )
    if r is None:
        return None
    d = _plain(r)
    d["row"] = orjson.loads(d["row"])
    d["violations"] = orjson.loads(d["violations"])
    return d


def mark_replayed(conn: Connection, seqs: Sequence[int], run_id: str) -> None:
    """Rows a replay moved on: kept, no longer held."""
    if seqs:
        conn.execute(
            update(quarantine)
            .where(quarantine.c.seq.in_(list(seqs)), quarantine.c.status == "held")
            .values(status="replayed", replayed_at=time.time(), replay_run=run_id)
        )


def still_held(conn: Connection, found: Sequence[tuple[int, list[dict[str, Any]]]]) -> None:
    """Rows a replay found still bad: their reasons as of now."""
    for seq, reasons in found:
        conn.execute(
            update(quarantine)
            .where(quarantine.c.seq == seq)
            .values(violations=orjson.dumps(reasons, default=str).decode())
        )


def freshness(
    engine: Engine, service: str, sources: Sequence[str], start: float, end: float
) -> dict[str, dict[str, Any]]:
    """Per source: when it last used a batch (scored, stored or labelled), when it first ran,
    and how many batches failed or were held in ``[start, end)``, plus the runs that failed
    before taking any batch (an unreachable database, a missing table)."""
    out: dict[str, dict[str, Any]] = {
        s: {"last_scored_at": None, "first_run_at": None, "ingest_failures": 0} for s in sources
    }
    if not out:
        return out
    with engine.connect() as conn:
        scored = select(source_files.c.source, func.max(source_files.c.ts)).where(
            source_files.c.service == service,
            source_files.c.status.in_(("scored", "stored", "labelled")),
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
        broken = select(source_runs.c.source, func.count()).where(
            source_runs.c.service == service,
            source_runs.c.status == "failed",
            source_runs.c.files == 0,
            source_runs.c.started_at >= start,
            source_runs.c.started_at < end,
        )
        for source, n in conn.execute(broken.group_by(source_runs.c.source)):
            if source in out:
                out[source]["ingest_failures"] += int(n)
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
    "beat",
    "cursor",
    "finish_run",
    "freshness",
    "held",
    "hold_rows",
    "mark_replayed",
    "move_cursor",
    "one_held",
    "open_claims",
    "purge",
    "quarantined",
    "record_file",
    "reserve",
    "runs",
    "start_run",
    "still_held",
    "take_over",
    "taken",
]

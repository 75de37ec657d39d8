"""The one owner of ``datasets``: immutable dataset versions kept by ``use: train`` sources.

A version is the good rows of one batch as a Parquet file named by its content hash (the
SHA-256 of the rows in Arrow's stream format, so the same rows give the same hash whatever
file they came in), with its row count, columns, contract hash, source cursor range, time and
parent version. The same rows taken twice give no new version.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import Connection, Engine, desc, func, insert, select

from shipway.errors import InputError, NotFound
from shipway.manifest import ContractSpec
from shipway.store.tables import datasets


class _Hashing:
    """A write-only file that hashes what is written to it (nothing kept in memory)."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        self.h.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _canonical(table: pa.Table) -> pa.Table:
    """The rows with nothing but their values in the buffers: a column with nulls becomes its
    values (nulls filled) beside a column saying which were null, since the bytes under a null
    are whatever the reader left there."""
    import pyarrow.compute as pc

    table = table.combine_chunks().replace_schema_metadata(None)  # a writer's notes, not rows
    for i, name in enumerate(table.column_names):
        col = table.column(i)
        if col.null_count == 0:
            continue
        t = col.type
        fill = (
            "" if pa.types.is_string(t) or pa.types.is_large_string(t)
            else False if pa.types.is_boolean(t)
            else 0 if pa.types.is_integer(t) or pa.types.is_floating(t)
            else None
        )  # fmt: skip
        if fill is None:  # other types: compared as text
            col = pc.cast(col, pa.string())
            fill = ""
        table = table.set_column(i, name, pc.fill_null(col, pa.scalar(fill, col.type)))
        table = table.append_column(f"{name}\x00valid", pc.is_valid(col))
    return table.combine_chunks()


def content_hash(table: pa.Table) -> str:
    """SHA-256 of the rows (names, types and values) in Arrow's stream format, independent of
    how they were chunked or stored; streamed into the hash as it is written."""
    canon = _canonical(table)
    sink = _Hashing()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), canon.schema) as writer:
        writer.write_table(canon)
    return sink.h.hexdigest()


def write_parquet(table: pa.Table, path: Path) -> None:
    """Parquet as datasets and staged batches keep it: dictionary encoding for text columns
    only (numbers rarely repeat enough to gain from it, and trying costs time)."""
    import pyarrow.parquet as pq

    texts = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    pq.write_table(table, path, use_dictionary=texts or False)


def contract_hash(contract: ContractSpec) -> str:
    return hashlib.sha256(
        orjson.dumps(contract.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def _plain(row: Any) -> dict[str, Any]:
    d = {str(k): v for k, v in row.items()}
    d["columns"] = orjson.loads(d["columns"])
    for k in ("cursor_from", "cursor_to"):
        d[k] = orjson.loads(d[k]) if d[k] is not None else None
    return d


def save(
    conn: Connection,
    *,
    service: str,
    source: str,
    run_id: str,
    table: pa.Table,
    folder: Path,
    contract: ContractSpec,
    cursor_from: Any = None,
    cursor_to: Any = None,
) -> dict[str, Any]:
    """Keep ``table`` as the source's next version, in ``conn``'s transaction (the one that
    records the batch), or find the version that already holds the same rows. Returns the
    version's record with ``new`` saying which."""
    sha = content_hash(table)
    same = (
        conn.execute(
            select(datasets).where(
                datasets.c.service == service, datasets.c.source == source, datasets.c.sha256 == sha
            )
        )
        .mappings()
        .first()
    )
    if same is not None:
        return {**_plain(same), "new": False}
    parent = conn.execute(
        select(func.max(datasets.c.version)).where(
            datasets.c.service == service, datasets.c.source == source
        )
    ).scalar()
    final = folder / service / source / f"{sha}.parquet"
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{run_id}.partial")
        try:
            write_parquet(table, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    row = {
        "service": service,
        "source": source,
        "version": int(parent or 0) + 1,
        "sha256": sha,
        "rows": table.num_rows,
        "columns": orjson.dumps(
            [{"name": f.name, "type": str(f.type)} for f in table.schema]
        ).decode(),
        "contract_hash": contract_hash(contract),
        "cursor_from": None if cursor_from is None else orjson.dumps(cursor_from).decode(),
        "cursor_to": None if cursor_to is None else orjson.dumps(cursor_to).decode(),
        "created_at": time.time(),
        "parent": parent,
        "path": str(final),
        "run_id": run_id,
    }
    conn.execute(insert(datasets).values(**row))
    return {**_plain(row), "new": True}


def versions(engine: Engine, service: str, source: str | None = None) -> list[dict[str, Any]]:
    """Every version, newest first."""
    q = select(datasets).where(datasets.c.service == service)
    if source is not None:
        q = q.where(datasets.c.source == source)
    q = q.order_by(datasets.c.source, desc(datasets.c.version))
    with engine.connect() as conn:
        return [_plain(r) for r in conn.execute(q).mappings()]


def get(engine: Engine, service: str, source: str, version: int | None = None) -> dict[str, Any]:
    """One version (the newest when ``version`` is None); NotFound names what exists."""
    q = select(datasets).where(datasets.c.service == service, datasets.c.source == source)
    q = q.where(datasets.c.version == version) if version is not None else q
    with engine.connect() as conn:
        row = conn.execute(q.order_by(desc(datasets.c.version)).limit(1)).mappings().first()
    if row is None:
        have = [v["version"] for v in versions(engine, service, source)]
        what = f"version {version}" if version is not None else "a version"
        raise NotFound(f"dataset {source} has no {what} (versions: {have or 'none'})")
    return _plain(row)


def read(record: dict[str, Any]) -> pa.Table:
    """A version's rows, checked against its hash (a changed or missing file is refused)."""
    import pyarrow.parquet as pq

    path = Path(record["path"])
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"dataset {record['source']} v{record['version']}: {exc}") from None
    if content_hash(table) != record["sha256"]:
        raise InputError(
            f"dataset {record['source']} v{record['version']}: {path} no longer holds the rows "
            f"it was saved with (sha256 differs): it was changed after it was written"
        )
    return table


def diff(a: pa.Table, b: pa.Table) -> dict[str, Any]:
    """What changed from ``a`` to ``b``: rows, columns, and per shared column the missing
    share and (numbers) the mean."""
    import pyarrow.compute as pc

    ca, cb = set(a.column_names), set(b.column_names)
    columns = []
    for name in [c for c in b.column_names if c in ca]:
        x, y = a[name], b[name]
        entry: dict[str, Any] = {
            "column": name,
            "missing_share": [
                x.null_count / max(len(x), 1),
                y.null_count / max(len(y), 1),
            ],
        }
        if pa.types.is_integer(y.type) or pa.types.is_floating(y.type):
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                entry["mean"] = [pc.mean(x).as_py(), pc.mean(y).as_py()]
        columns.append(entry)
    return {
        "rows": [a.num_rows, b.num_rows],
        "columns_added": sorted(cb - ca),
        "columns_removed": sorted(ca - cb),
        "columns": columns,
    }


__all__ = [
    "content_hash",
    "contract_hash",
    "diff",
    "get",
    "read",
    "save",
    "versions",
    "write_parquet",
]

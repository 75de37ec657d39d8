"""Reading a SQL source: the rows of its query past the cursor, in cursor order.

The cursor is a column that grows with new rows (a time, a sequence). Rows are read ordered
by the cursor and then the key; the position after a batch is the last cursor value plus the
keys taken at that value, because rows sharing it may still arrive (two rows written in the
same millisecond, one committed later). The next read takes rows past the value, and rows at
the value whose key was not taken: none twice, none skipped.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any

import pyarrow as pa
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from shipway.data.files import records_table
from shipway.errors import InputError
from shipway.manifest import SourceSpec

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def to_json(v: Any) -> Any:
    """A cursor or key value as JSON that :func:`from_json` turns back into the same type
    (a database compares a time with a time, not with text)."""
    if isinstance(v, dt.datetime):
        return {"datetime": v.isoformat()}
    if isinstance(v, dt.date):
        return {"date": v.isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    return v


def from_json(v: Any) -> Any:
    if isinstance(v, dict):
        if "datetime" in v:
            return dt.datetime.fromisoformat(v["datetime"])
        if "date" in v:
            return dt.date.fromisoformat(v["date"])
        if "decimal" in v:
            return decimal.Decimal(v["decimal"])
    return v


def _shown(v: Any) -> str:
    v = from_json(v)
    return v.isoformat() if isinstance(v, dt.date) else str(v)


class Reader:
    """One run's connection to a SQL source."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        try:
            url = spec.source_url()
        except ValueError as exc:
            raise InputError(str(exc)) from None
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise InputError(f"source {spec.name}: the url cannot be used: {exc}") from None
        quote = self.engine.dialect.identifier_preparer.quote
        assert spec.query and spec.cursor and spec.key
        query = spec.query.strip().rstrip(";")
        if _TABLE_NAME.fullmatch(query):
            query = "SELECT * FROM " + ".".join(quote(p) for p in query.split("."))
        self.query = query
        self.cursor_col, self.key_col = quote(spec.cursor), quote(spec.key)

    def close(self) -> None:
        self.engine.dispose()

    def describe(self, after: Any, upto: Any) -> str:
        start = "the start" if after is None else _shown(after)
        return f"{self.spec.cursor} after {start} up to {_shown(upto)}"

    def next_batch(
        self, position: tuple[Any, list[Any]]
    ) -> tuple[pa.Table, tuple[Any, Any]] | None:
        """Up to ``fetch_rows`` rows past ``position`` and the position after them (cursor
        value and the keys taken at it, as JSON), or None when there are none."""
        value, boundary = position
        c, k = self.cursor_col, self.key_col
        params: dict[str, Any] = {}
        where = ""
        if value is not None:
            params["c"] = from_json(value)
            where = f"WHERE {c} > :c"
            if boundary:
                where = f"WHERE ({c} > :c OR ({c} = :c AND {k} NOT IN :b))"
                params["b"] = [from_json(b) for b in boundary]
        sql = (
            f"SELECT * FROM ({self.query}) shipway_rows {where} "
            f"ORDER BY {c}, {k} LIMIT {int(self.spec.fetch_rows)}"
        )
        stmt = text(sql)
        if "b" in params:
            stmt = stmt.bindparams(bindparam("b", expanding=True))
        try:
            with self.engine.connect() as conn:
                result = conn.execute(stmt, params)
                names = list(result.keys())
                rows = result.fetchall()
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
            raise InputError(f"source {self.spec.name}: the query failed: {first}") from None
        if not rows:
            return None
        for need in (self.spec.cursor, self.spec.key):
            if need not in names:
                raise InputError(
                    f"source {self.spec.name}: the query returns no column {need!r} "
                    f"(columns: {names})"
                )
        ci, ki = names.index(self.spec.cursor), names.index(self.spec.key)
        last = rows[-1][ci]
        keys = [to_json(r[ki]) for r in rows if r[ci] == last]
        if value is not None and from_json(value) == last:
            keys = list(boundary) + keys
        return records_table([dict(zip(names, r, strict=True)) for r in rows]), (
            to_json(last),
            keys,
        )


#: The sink table's column naming the batch its rows came from (a batch written again, by a
#: run that took up a killed one's claim, replaces its rows instead of adding them twice).
BATCH_COLUMN = "shipway_batch"


def _sql_type(t: pa.DataType) -> Any:
    import sqlalchemy as sa

    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return sa.Float()
    if pa.types.is_boolean(t):
        return sa.Boolean()
    return sa.Text()


def write_table(sink: Any, table: pa.Table, batch: str) -> str:
    """A batch's answers into the sink's SQL table (created when missing) in one transaction,
    replacing any rows an earlier write of the same batch left."""
    import sqlalchemy as sa

    try:
        engine = create_engine(sink.database_url())
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise InputError(f"the sink's url cannot be used: {exc}") from None
    meta = sa.MetaData()
    target = sa.Table(
        sink.table,
        meta,
        sa.Column(BATCH_COLUMN, sa.String(64), nullable=False, index=True),
        *(sa.Column(f.name, _sql_type(f.type)) for f in table.schema),
    )
    rows = [{BATCH_COLUMN: batch, **r} for r in table.to_pylist()]
    try:
        meta.create_all(engine, checkfirst=True)
        with engine.begin() as conn:
            conn.execute(target.delete().where(target.c[BATCH_COLUMN] == batch))
            if rows:
                conn.execute(target.insert(), rows)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise InputError(f"the sink table {sink.table} could not be written: {first}") from None
    finally:
        engine.dispose()
    return f"table {sink.table} ({len(rows)} rows)"


__all__ = ["BATCH_COLUMN", "Reader", "from_json", "to_json", "write_table"]

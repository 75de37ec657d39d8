"""Finding a source's new files and reading one into an Arrow table."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from shipway.errors import InputError
from shipway.manifest import ContractSpec

_BY_EXTENSION = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass(frozen=True)
class Candidate:
    """A file found by a source's glob: where, what it holds (sha256) and its size."""

    path: Path
    sha256: str
    size: int


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_files(
    pattern: str,
    base: Path,
    settle_s: float,
    taken: Iterable[str],
    now: float | None = None,
    exclude: Path | None = None,
) -> tuple[list[Candidate], list[Path]]:
    """Files matching ``pattern`` (relative to ``base``) whose content was not taken before,
    oldest first, and the files left for later because they changed less than ``settle_s``
    ago (they may still be being written). Files under ``exclude`` (the sink) are never
    taken: a source does not score its own answers."""
    now = time.time() if now is None else now
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    seen = set(taken)
    skip = exclude.resolve() if exclude is not None else None
    ready: list[tuple[float, Candidate]] = []
    waiting: list[Path] = []
    for name in sorted(glob.glob(full, recursive=True)):
        path = Path(name)
        if not path.is_file() or path.name.startswith("."):
            continue
        if skip is not None and skip in path.resolve().parents:
            continue
        st = path.stat()
        if now - st.st_mtime < settle_s:
            waiting.append(path)
            continue
        sha = digest(path)
        if path.stat().st_mtime != st.st_mtime:  # written to while it was read
            waiting.append(path)
            continue
        if sha not in seen:
            seen.add(sha)
            ready.append((st.st_mtime, Candidate(path, sha, st.st_size)))
    ready.sort(key=lambda t: (t[0], str(t[1].path)))
    return [c for _, c in ready], waiting


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    fmt = _BY_EXTENSION.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{path.name}: cannot tell the format from the extension {path.suffix!r}; "
            "set the source's format (csv, parquet or jsonl)"
        )
    return fmt


_ARROW = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def _text_fields(contract: ContractSpec) -> set[str]:
    """Fields read as text whatever they look like: strings, dates, and categories whose
    declared values are text (a category of numbers stays numbers)."""
    out = set()
    for f in contract.inputs:
        text_values = all(isinstance(v, str) for v in f.values or [])
        if f.type in ("string", "datetime") or (f.type == "category" and text_values):
            out.add(f.name)
    return out


def _read_jsonl(f: Any, what: str) -> pa.Table:
    """JSON lines as Python values (no type guessing across rows: a date stays text)."""
    import orjson

    records = []
    for n, line in enumerate(f, 1):
        if line.strip():
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{what} line {n} is not JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise InputError(f"{what} line {n} is not a JSON object")
            records.append(rec)
    return records_table(records)


def records_table(records: list[dict[str, object]]) -> pa.Table:
    """JSON-like records as a table, one column per key seen in any record (absent: null).
    A column of mixed kinds becomes text (the contract then says what each value may be);
    nested values are kept as JSON text."""
    import orjson

    columns: dict[str, pa.Array] = {}
    for k in dict.fromkeys(k for r in records for k in r):
        values = [r.get(k) for r in records]
        if not _one_type(values):  # mixed kinds: text, and the contract says what it may be
            values = [None if v is None else str(v) for v in values]
        try:
            columns[k] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # nested: JSON text
            columns[k] = pa.array([None if v is None else orjson.dumps(v).decode() for v in values])
    return pa.table(columns)


def _one_type(values: list[object]) -> bool:
    kinds = {type(v) for v in values if v is not None}
    return len(kinds) <= 1 or kinds <= {int, float}


def normalise(table: pa.Table, contract: ContractSpec) -> pa.Table:
    """Columns as the contract reads them: an all-empty column typed as its field, dates and
    times written as ISO 8601 text."""
    import pyarrow.compute as pc

    for f in contract.inputs:
        if f.name not in table.column_names:
            continue
        i = table.column_names.index(f.name)
        col = table.column(i)
        if pa.types.is_null(col.type):
            table = table.set_column(
                i, f.name, pa.nulls(len(col), type=_ARROW.get(f.type, pa.string()))
            )
        elif pa.types.is_decimal(col.type):  # NUMERIC columns of a database
            table = table.set_column(i, f.name, col.cast(pa.float64()))
        elif f.type in ("datetime", "string") and (
            pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)
        ):
            fmt = "%Y-%m-%d" if pa.types.is_date(col.type) else "%Y-%m-%dT%H:%M:%S"
            table = table.set_column(i, f.name, pc.strftime(col, format=fmt))
    return table


def read_table(path: Path, fmt: str, contract: ContractSpec) -> pa.Table:
    """The file as a table, its columns as the contract reads them (see ``normalise``); an
    unreadable file is an InputError naming it."""
    return _read(path, path.name, fmt, contract)


def read_bytes(data: bytes, what: str, fmt: str, contract: ContractSpec) -> pa.Table:
    """A body (CSV, Parquet or JSON lines) as :func:`read_table` reads a file."""
    return _read(pa.BufferReader(data), what, fmt, contract)


def _read(where: Any, what: str, fmt: str, contract: ContractSpec) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "csv":
            table = pacsv.read_csv(
                where,
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in _text_fields(contract)},
                    strings_can_be_null=True,
                ),
            )
        elif fmt == "jsonl":
            if isinstance(where, Path):
                with where.open("rb") as f:
                    table = _read_jsonl(f, what)
            else:
                table = _read_jsonl(io.BytesIO(where.read()), what)
        else:
            table = pq.read_table(where)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} cannot be read as {fmt}: {first}") from None
    return normalise(table, contract)


__all__ = [
    "Candidate",
    "digest",
    "file_format",
    "new_files",
    "normalise",
    "read_bytes",
    "read_table",
    "records_table",
]

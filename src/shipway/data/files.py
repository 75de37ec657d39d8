"""Finding a source's new files and reading one into an Arrow table."""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from shipway.errors import InputError
from shipway.manifest import ContractSpec

_BY_EXTENSION = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
_BY_EXTENSION[".ndjson"] = "jsonl"


@dataclass(frozen=True)
class Candidate:
    """A file found by a source's glob: where, what it holds (sha256) and its size."""

    path: Path
    sha256: str
    size: int


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_files(
    pattern: str, base: Path, settle_s: float, taken: Iterable[str], now: float | None = None
) -> tuple[list[Candidate], list[Path]]:
    """Files matching ``pattern`` (relative to ``base``) whose content was not taken before,
    oldest first, and the files left for later because they changed less than ``settle_s``
    ago (they may still be being written)."""
    now = time.time() if now is None else now
    full = pattern if os.path.isabs(pattern) else str(base / pattern)
    seen = set(taken)
    ready: list[tuple[float, Candidate]] = []
    waiting: list[Path] = []
    for name in sorted(glob.glob(full, recursive=True)):
        path = Path(name)
        if not path.is_file():
            continue
        st = path.stat()
        if now - st.st_mtime < settle_s:
            waiting.append(path)
            continue
        sha = _digest(path)
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


def read_table(path: Path, fmt: str, contract: ContractSpec) -> pa.Table:
    """The file as a table. Text fields are read as text (a CSV column of dates or digits
    stays what the contract says it is); an unreadable file is an InputError naming it."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    text_fields = {f.name for f in contract.inputs if f.type in ("string", "category", "datetime")}
    try:
        if fmt == "csv":
            return pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in text_fields},
                    strings_can_be_null=True,
                ),
            )
        if fmt == "jsonl":
            text = pa.schema([(n, pa.string()) for n in sorted(text_fields)])
            return pajson.read_json(
                path,
                parse_options=pajson.ParseOptions(
                    explicit_schema=text, unexpected_field_behavior="infer"
                ),
            )
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path.name} cannot be read as {fmt}: {first}") from None


__all__ = ["Candidate", "file_format", "new_files", "read_table"]

"""One run of a scoring source: take its new files, validate each as a whole table, quarantine
the bad rows with their reasons, score the good rows through the service's predict path (so
every row is a logged decision, answered by the plan as online) and write the answers to the
sink, whole or not at all."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import Engine

from shipway.contract import Contract
from shipway.data import ledger
from shipway.data.files import Candidate, file_format, new_files, read_table
from shipway.decisions.ids import new_id
from shipway.errors import InputError, ShipwayError
from shipway.manifest import ContractSpec, SourceSpec

#: ``score(records, caller)``: the service's predict path, answering ``{"decisions": [...]}``.
Score = Callable[[list[dict[str, Any]], str], Awaitable[dict[str, Any]]]
#: ``treat(field, value)``: a value as the decision log keeps it (personal fields treated).
Treat = Callable[[str, Any], Any]
#: ``progress(file, rows done, rows in the file)``.
Progress = Callable[[str, int, int], None]


@dataclass
class FileOutcome:
    """What became of one file: ``scored``, ``held`` (too many bad rows: nothing scored) or
    ``failed`` (unreadable, or the model could not answer)."""

    path: str
    status: str
    rows_in: int = 0
    rows_good: int = 0
    rows_bad: int = 0
    sink: str | None = None
    error: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    warned: bool = False


@dataclass
class RunResult:
    run_id: str
    source: str
    status: str
    files: list[FileOutcome]
    waiting: list[str]
    """Files left for a later run: changed too recently, perhaps still being written."""

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_good(self) -> int:
        return sum(f.rows_good for f in self.files)

    @property
    def rows_bad(self) -> int:
        return sum(f.rows_bad for f in self.files)


async def run_source(
    *,
    engine: Engine,
    service: str,
    spec: SourceSpec,
    base: Path,
    contract: ContractSpec,
    score: Score,
    treat: Treat | None = None,
    actor: str = "system:sources",
    progress: Progress | None = None,
) -> RunResult:
    """Take every new, settled file of ``spec`` once; see the module's description."""
    run_id = new_id()
    ledger.start_run(engine, run_id, service, spec.name, actor)
    outcomes: list[FileOutcome] = []
    waiting: list[Path] = []
    try:
        sink_dir = Path(spec.sink.path)
        sink_dir = sink_dir if sink_dir.is_absolute() else base / sink_dir
        seen = await asyncio.to_thread(ledger.taken, engine, service, spec.name)
        found, waiting = await asyncio.to_thread(
            new_files, spec.path, base, spec.settle_s, seen, None, sink_dir
        )
        checker = Contract(contract)
        for cand in found:
            taken: dict[str, Any] = {
                "service": service,
                "source": spec.name,
                "run_id": run_id,
                "path": _shown(cand.path, base),
                "sha256": cand.sha256,
                "size": cand.size,
            }
            if not await asyncio.to_thread(functools.partial(ledger.reserve, engine, **taken)):
                continue  # another run has this content
            outcomes.append(
                await _take(engine, spec, base, contract, checker, cand, taken, score, treat,
                            progress)
            )  # fmt: skip
    except Exception as exc:
        ledger.finish_run(
            engine, run_id, status="failed", files=len(outcomes),
            rows_in=sum(f.rows_in for f in outcomes), rows_good=sum(f.rows_good for f in outcomes),
            rows_bad=sum(f.rows_bad for f in outcomes),
            error=exc.message if isinstance(exc, ShipwayError) else f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        raise
    if any(f.status == "failed" for f in outcomes):
        status = "failed"
    elif any(f.status == "held" or f.warned for f in outcomes):
        status = "warn"
    else:
        status = "ok"
    result = RunResult(run_id, spec.name, status, outcomes, [str(p) for p in waiting])
    errors = [f"{Path(f.path).name}: {f.error}" for f in outcomes if f.error]
    ledger.finish_run(
        engine,
        run_id,
        status=status,
        files=len(outcomes),
        rows_in=result.rows_in,
        rows_good=result.rows_good,
        rows_bad=result.rows_bad,
        error="; ".join(errors)[:4000] or None,
    )
    return result


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


async def _take(
    engine: Engine,
    spec: SourceSpec,
    base: Path,
    contract: ContractSpec,
    checker: Contract,
    cand: Candidate,
    taken: dict[str, Any],
    score: Score,
    treat: Treat | None,
    progress: Progress | None,
) -> FileOutcome:
    """One reserved file, start to end. Reading, validating and writing run on a worker
    thread, so a server's event loop keeps answering requests meanwhile."""
    shown = taken["path"]

    def settle(status: str, held: list[Any], **counts: Any) -> None:
        with engine.begin() as conn:
            ledger.hold_rows(conn, service=taken["service"], source=spec.name,
                             run_id=taken["run_id"], file=shown, rows=held)  # fmt: skip
            ledger.record_file(conn, service=taken["service"], source=spec.name,
                               sha256=taken["sha256"], status=status, **counts)  # fmt: skip

    try:
        table = await asyncio.to_thread(
            read_table, cand.path, file_format(cand.path, spec.format), contract
        )
    except InputError as exc:
        await asyncio.to_thread(settle, "failed", [], error=exc.message)
        return FileOutcome(shown, "failed", error=exc.message)

    names = {f.name for f in contract.inputs}
    ignored = [c for c in table.column_names if c not in names]  # new columns: not the model's
    if ignored:
        table = table.drop_columns(ignored)
    checked = await asyncio.to_thread(checker.validate_table, table)
    n, bad = table.num_rows, checked.bad_count
    held = _held_rows(checked.bad.to_pylist(), checked.reasons, treat)
    share = bad / n if n else 0.0
    limits = spec.max_bad_share
    note = f"columns not in the contract, ignored: {ignored}" if ignored else None
    if bad and share > limits.fail:
        why = (
            f"{bad} of {n} rows ({share:.1%}) break the contract, more than max_bad_share.fail "
            f"({limits.fail:.1%}): the file is held whole and nothing was scored"
        )
        why = f"{why}; {note}" if note else why
        await asyncio.to_thread(settle, "held", held, rows_in=n, rows_bad=bad, error=why)
        return FileOutcome(shown, "held", n, 0, bad, error=why, ignored_columns=ignored)

    records = checked.good.to_pylist()
    answers: list[dict[str, Any]] = []
    try:
        for start in range(0, len(records), spec.batch_rows):
            body = await score(records[start : start + spec.batch_rows], f"source:{spec.name}")
            answers.extend(body["decisions"])
            if progress is not None:
                progress(shown, len(answers), len(records))
        sink = None
        if records:
            sink = await asyncio.to_thread(
                _write_sink, spec, base, cand, taken["run_id"], checked.good, answers
            )
    except Exception as exc:  # the model, the sink's disk: nothing unscored is lost
        reason = exc.message if isinstance(exc, ShipwayError) else f"{type(exc).__name__}: {exc}"
        if len(answers) < len(records):
            why = (
                f"stopped after {len(answers)} of {len(records)} good rows were scored (their "
                f"decisions are logged): {reason}; the rest are quarantined as unscored"
            )
        else:
            why = (
                f"all {len(records)} good rows were scored (their decisions are logged: "
                f"shipway decisions export), but the sink could not be written: {reason}"
            )
        good_index = _good_index(n, checked)
        unscored = [
            (good_index[k], _kept(records[k], treat), [UNSCORED | {"expected": reason}])
            for k in range(len(answers), len(records))
        ]
        await asyncio.to_thread(
            settle, "failed", held + unscored, rows_in=n, rows_good=len(answers),
            rows_bad=bad, error=why,
        )  # fmt: skip
        return FileOutcome(shown, "failed", n, len(answers), bad, error=why,
                           ignored_columns=ignored)  # fmt: skip
    await asyncio.to_thread(
        settle, "scored", held, rows_in=n, rows_good=len(records), rows_bad=bad, sink=sink,
        error=note,
    )  # fmt: skip
    return FileOutcome(shown, "scored", n, len(records), bad, sink=sink, ignored_columns=ignored,
                       warned=bool(bad) and share > limits.warn)  # fmt: skip


#: How a good row that could not be scored (the model or the sink failed) is quarantined.
UNSCORED = {"field": None, "rule": "unscored"}


def _good_index(n: int, checked: Any) -> list[int]:
    """The file's row number of each good row, in order."""
    bad = {int(r[0]["row"]) for r in checked.reasons if r}
    return [i for i in range(n) if i not in bad]


def _kept(row: dict[str, Any], treat: Treat | None) -> dict[str, Any]:
    return {k: treat(k, v) for k, v in row.items()} if treat is not None else row


def _held_rows(
    rows: list[dict[str, Any]], reasons: list[list[Any]], treat: Treat | None
) -> list[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    out = []
    for row, broken in zip(rows, reasons, strict=True):
        index = int(broken[0]["row"]) if broken else -1
        kept = _kept(row, treat)
        rules = [
            {"field": v.get("field"), "rule": v.get("rule"), "expected": v.get("expected")}
            for v in broken
        ]
        out.append((index, kept, rules))
    return out


def _column(values: list[Any]) -> pa.Array:
    """Answers as a column: their own type when they share one, else JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else orjson.dumps(v).decode() for v in values])


def _write_sink(
    spec: SourceSpec,
    base: Path,
    cand: Candidate,
    run_id: str,
    good: pa.Table,
    answers: list[dict[str, Any]],
) -> str:
    """The file's answers beside its rows, written to a hidden name and renamed into place,
    so a reader of the sink never sees half a file."""
    folder = Path(spec.sink.path)
    folder = folder if folder.is_absolute() else base / folder
    folder.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if spec.sink.format == "parquet" else "csv"
    final = folder / f"{cand.path.stem}.{cand.sha256[:12]}.{ext}"
    out = good
    for name, values in (
        ("decision_id", [a["id"] for a in answers]),
        ("output", [a["output"] for a in answers]),
        ("confidence", [a["confidence"] for a in answers]),
        ("model_version", [a["model_version"] for a in answers]),
        ("route", [a["route"] for a in answers]),
    ):
        out = out.append_column(name, _column(values))
    tmp = folder / f".{final.name}.{run_id}.partial"  # one run's own name
    try:
        if ext == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(out, tmp)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(out, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return _shown(final, base)


__all__ = ["FileOutcome", "Progress", "RunResult", "Score", "run_source"]

"""One run of a source: take its new batches (files, SQL rows past the cursor, or a pushed
body), check each batch's columns against the contract (schema changes), validate it as a
whole table, quarantine the bad rows with their reasons, and use the good ones: score them
through the service's predict path (every row a logged decision, answered by the plan as
online) and write the answers to the sink, keep them as a dataset version, or store them as
labels.

Every batch is claimed before it is used (``taking``), in the transaction that moves a SQL
source's cursor, so two runs never take one batch and the cursor never passes rows no claim
holds. A scored batch's rows are logged under ids derived from the batch and the row, so a
run that takes up the claim of a killed run (its process gone) scores only the rows whose
decisions are not in the log: no row twice, none skipped.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from sqlalchemy import Connection, Engine

from shipway.concurrency import OWNER, local_owner_alive
from shipway.contract import Contract
from shipway.data import datasets, ledger, schema
from shipway.data.files import file_format, new_files, normalise, read_table, records_table
from shipway.decisions.ids import derived_ids, new_id
from shipway.errors import FeedbackInvalid, InputError, ShipwayError
from shipway.manifest import ContractSpec, SourceSpec

#: ``score(rows, caller, ids)``: the service's predict path for rows already validated as a
#: table (tuples in contract order), answering ``{"decisions": [...]}`` with each row logged
#: under its given id.
Score = Callable[[list[tuple[Any, ...]], str, list[str]], Awaitable[dict[str, Any]]]
#: ``answers(ids)``: the logged answers among ``ids`` (a resumed batch's scored rows).
Answers = Callable[[list[str]], dict[str, dict[str, Any]]]
#: ``label(conn, items)``: store ``{"id"|"key", "label"}`` items in ``conn``'s transaction;
#: raises FeedbackInvalid naming the bad items.
Label = Callable[[Connection, list[dict[str, Any]]], list[dict[str, Any]]]
#: ``treat(field, value)``: a value as the decision log keeps it (personal fields treated).
Treat = Callable[[str, Any], Any]
#: ``progress(batch, rows done, rows in the batch)``.
Progress = Callable[[str, int, int], None]

#: A run on another host silent this long is taken for dead (runs beat between batches).
STALE_S = 600.0
#: Runs under way in this process (a server runs several at once: pushes, schedules).
_LIVE: set[str] = set()


@dataclass
class Uses:
    """What a run needs from the service for each use."""

    score: Score | None = None
    answers: Answers | None = None
    label: Label | None = None
    datasets_dir: Path | None = None
    treat: Treat | None = None


@dataclass
class Batch:
    """A claimed batch: how it is shown, its content hash, and how to read it."""

    shown: str
    sha256: str
    size: int
    claimed_at: float
    read: Callable[[], pa.Table]
    stem: str
    cursor_from: Any = None
    cursor_to: Any = None
    staged: Path | None = None
    resumed: bool = False
    replaying: list[int] | None = None
    """A quarantine replay: the quarantined row (its number) behind each row of the batch."""
    unreadable: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)
    """Parts of the batch that were not rows at all (a stream message that is not JSON),
    quarantined with its claim and counted as bad rows."""


@dataclass
class FileOutcome:
    """What became of one batch: ``scored``/``stored``/``labelled`` (used), ``held`` (too
    many bad rows or a schema change the policy refuses: nothing used), ``failed``
    (unreadable, or the model could not answer) or ``duplicate`` (a pushed body already
    taken)."""

    path: str
    status: str
    rows_in: int = 0
    rows_good: int = 0
    rows_bad: int = 0
    sink: str | None = None
    error: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    warned: bool = False
    schema_changes: list[dict[str, Any]] = field(default_factory=list)
    dataset_version: int | None = None
    resumed: bool = False
    answers: list[dict[str, Any]] | None = None
    replayed: bool = False


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

    def to_json(self) -> dict[str, Any]:
        """The run as ``sources run --json``, ``GET /v1/sources`` and a push's reply show it."""
        return {
            "run_id": self.run_id,
            "source": self.source,
            "status": self.status,
            "rows_in": self.rows_in,
            "rows_good": self.rows_good,
            "rows_bad": self.rows_bad,
            "files": [{k: v for k, v in f.__dict__.items() if k != "answers"} for f in self.files],
            "waiting": self.waiting,
        }

    @property
    def rows_good(self) -> int:
        return sum(f.rows_good for f in self.files)

    @property
    def rows_bad(self) -> int:
        return sum(f.rows_bad for f in self.files)


@dataclass
class _Run:
    engine: Engine
    service: str
    spec: SourceSpec
    base: Path
    staging: Path
    contract: ContractSpec
    checker: Contract
    uses: Uses
    run_id: str
    progress: Progress | None


def _alive(run_id: str, owner: str | None, beat_at: float | None, now: float) -> bool:
    """Whether a run's process may still be working on its claims."""
    if not owner:
        return False
    if owner == OWNER:
        return run_id in _LIVE  # ours: under way, or ended leaving the claim behind
    alive = local_owner_alive(owner)
    if alive is not None:
        return alive
    return beat_at is not None and now - beat_at < STALE_S


async def run_source(
    *,
    engine: Engine,
    service: str,
    spec: SourceSpec,
    base: Path,
    staging: Path,
    contract: ContractSpec,
    uses: Uses,
    actor: str = "system:sources",
    progress: Progress | None = None,
    pushed: pa.Table | None = None,
) -> RunResult:
    """Take every new batch of ``spec`` once; see the module's description. ``pushed``: the
    body of a push (the only batch a push source's run takes, after any abandoned ones)."""
    run = _Run(engine, service, spec, base, staging, contract, Contract(contract), uses,
               new_id(), progress)  # fmt: skip

    async def work(outcomes: list[FileOutcome], waiting: list[Path]) -> None:
        for batch in await asyncio.to_thread(_abandoned, run):
            outcomes.append(await _take(run, batch))
        if spec.kind == "files":
            sink_dir = _sink_dir(spec, base)
            seen = await asyncio.to_thread(ledger.taken, engine, service, spec.name)
            assert spec.path is not None
            found, later = await asyncio.to_thread(
                new_files, spec.path, base, spec.settle_s, seen, None, sink_dir
            )
            waiting.extend(later)
            for cand in found:
                shown = _shown(cand.path, base)
                now = time.time()
                claimed = await asyncio.to_thread(
                    functools.partial(
                        ledger.reserve, engine, service=service, source=spec.name,
                        run_id=run.run_id, path=shown, sha256=cand.sha256, size=cand.size,
                        claimed_at=now,
                    )
                )  # fmt: skip
                if not claimed:
                    continue  # another run has this content
                fmt = file_format(cand.path, spec.format)
                batch = Batch(shown, cand.sha256, cand.size, now,
                              functools.partial(read_table, cand.path, fmt, contract),
                              cand.path.stem)  # fmt: skip
                outcomes.append(await _take(run, batch))
                await asyncio.to_thread(ledger.beat, engine, run.run_id)
        elif spec.kind == "sql":
            from shipway.data import sql

            reader = sql.Reader(spec)
            try:
                while (got := await asyncio.to_thread(_claim_sql, run, reader)) is not None:
                    outcomes.append(await _take(run, got))
                    await asyncio.to_thread(ledger.beat, engine, run.run_id)
            finally:
                reader.close()
        elif spec.kind == "stream":
            outcomes.extend(await _take_stream(run))
        elif pushed is not None:
            got = await asyncio.to_thread(_claim_pushed, run, pushed)
            if got is None:
                outcomes.append(
                    FileOutcome("push", "duplicate", pushed.num_rows,
                                error="these rows were pushed before; nothing was taken again")
                )  # fmt: skip
            else:
                outcomes.append(await _take(run, got))

    return await _as_run(run, actor, work)


Work = Callable[[list[FileOutcome], list[Path]], Awaitable[None]]


async def _as_run(run: _Run, actor: str, work: Work) -> RunResult:
    """A run's record around its work: started (owned by this process, known to be under
    way here), then finished with its counts and status (``failed`` if a batch failed,
    ``warn`` if one was held, went over the warn share or still has bad rows after a replay),
    or failed with the reason if the work raised."""
    engine = run.engine
    _LIVE.add(run.run_id)
    try:
        await asyncio.to_thread(
            ledger.start_run, engine, run.run_id, run.service, run.spec.name, actor, OWNER
        )
        outcomes: list[FileOutcome] = []
        waiting: list[Path] = []
        try:
            await work(outcomes, waiting)
        except Exception as exc:
            await asyncio.to_thread(
                functools.partial(
                    ledger.finish_run, engine, run.run_id, status="failed",
                    files=len(outcomes), rows_in=sum(f.rows_in for f in outcomes),
                    rows_good=sum(f.rows_good for f in outcomes),
                    rows_bad=sum(f.rows_bad for f in outcomes), error=_reason(exc)[:4000],
                )
            )  # fmt: skip
            raise
        if any(f.status == "failed" for f in outcomes):
            status = "failed"
        elif any(f.status == "held" or f.warned or (f.replayed and f.rows_bad) for f in outcomes):
            status = "warn"
        else:
            status = "ok"
        result = RunResult(run.run_id, run.spec.name, status, outcomes, [str(p) for p in waiting])
        errors = "; ".join(f"{f.path}: {f.error}" for f in outcomes if f.error)
        await asyncio.to_thread(
            functools.partial(
                ledger.finish_run, engine, run.run_id, status=status, files=len(outcomes),
                rows_in=result.rows_in, rows_good=result.rows_good, rows_bad=result.rows_bad,
                error=errors[:4000] or None,
            )
        )  # fmt: skip
        return result
    finally:
        _LIVE.discard(run.run_id)


async def replay(
    *,
    engine: Engine,
    service: str,
    spec: SourceSpec,
    base: Path,
    staging: Path,
    contract: ContractSpec,
    uses: Uses,
    actor: str,
    seqs: list[int] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Check quarantined rows of ``spec`` again (all held ones, or those numbered ``seqs``)
    against the contract and schema policy as they are now, and use the good ones as the
    source would; the rest stay held with their reasons as of now. A run of its own."""
    rows = await asyncio.to_thread(ledger.held, engine, service, spec.name, seqs)
    if not rows:
        which = f"rows {seqs}" if seqs else "rows"
        raise InputError(f"source {spec.name} has no held {which} to replay")
    run = _Run(engine, service, spec, base, staging, contract, Contract(contract), uses,
               new_id(), progress)  # fmt: skip
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:  # one batch per file they came from: its columns are its own
        groups.setdefault(r["file"] or "", []).append(r)

    async def work(outcomes: list[FileOutcome], waiting: list[Path]) -> None:
        for k, (file, group) in enumerate(groups.items()):
            table = normalise(records_table([r["row"] for r in group]), contract)
            now = time.time()
            sha = hashlib.sha256(f"replay:{run.run_id}:{k}".encode()).hexdigest()
            shown = f"replay of {len(group)} held rows of {file or 'a push'}"
            await asyncio.to_thread(
                functools.partial(
                    ledger.reserve, engine, service=service, source=spec.name,
                    run_id=run.run_id, path=shown, sha256=sha, size=0, claimed_at=now,
                )
            )  # fmt: skip
            read = functools.partial(_given, table)
            batch = Batch(shown, sha, 0, now, read, f"replay-{run.run_id[-12:]}-{k}",
                          replaying=[int(r["seq"]) for r in group])  # fmt: skip
            outcomes.append(await _take(run, batch))

    return await _as_run(run, actor, work)


def _given(table: pa.Table) -> pa.Table:
    """A batch whose rows are already in hand (a replay's) reads as itself."""
    return table


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ShipwayError) else f"{type(exc).__name__}: {exc}"


def _sink_dir(spec: SourceSpec, base: Path) -> Path | None:
    if spec.sink is None or spec.sink.path is None:
        return None
    folder = Path(spec.sink.path)
    return folder if folder.is_absolute() else base / folder


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _abandoned(run: _Run) -> list[Batch]:
    """Claims of this source whose run is over or whose process is gone, moved to ``run``."""
    now = time.time()
    out = []
    for claim in ledger.open_claims(run.engine, run.service, run.spec.name):
        alive = _alive(claim["run_id"], claim["owner"], claim["beat_at"], now)
        if claim["run_status"] == "running" and alive:
            continue
        if not ledger.take_over(run.engine, claim["seq"], claim["run_id"], run.run_id):
            continue
        out.append(_reopen(run, claim))
    return out


def _reopen(run: _Run, claim: dict[str, Any]) -> Batch:
    """An abandoned claim as a batch again: its staged snapshot, or its file (which must
    still hold the content that was claimed)."""
    contract = run.contract
    claimed_at = float(claim["claimed_at"] or claim["ts"])
    if claim["staged"]:
        staged = Path(claim["staged"])
        read: Callable[[], pa.Table] = functools.partial(_read_staged, staged, contract)
    else:
        staged = None
        path = Path(claim["path"])
        path = path if path.is_absolute() else run.base / path
        fmt = file_format(path, run.spec.format)

        def read_file() -> pa.Table:
            if not path.is_file():
                raise InputError(f"{claim['path']} is gone; its claim could not be taken up")
            from shipway.data.files import digest

            if digest(path) != claim["sha256"]:
                raise InputError(
                    f"{claim['path']} changed since it was claimed; its rows were not taken up"
                )
            return read_table(path, fmt, contract)

        read = read_file

    cur = [orjson.loads(claim[k]) if claim[k] else None for k in ("cursor_from", "cursor_to")]
    return Batch(claim["path"], claim["sha256"], int(claim["size"]), claimed_at, read,
                 Path(claim["path"]).stem, cur[0], cur[1], staged, resumed=True)  # fmt: skip


def _read_staged(path: Path, contract: ContractSpec) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return normalise(pq.read_table(path), contract)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"the staged batch {path.name} cannot be read: {exc}") from None


def _stage(run: _Run, table: pa.Table) -> tuple[Path, str, int]:
    """Keep a batch that is not a file (SQL rows, a pushed body) as Parquet in the store,
    named by its content, so a run that takes up its claim reads the same rows."""
    sha = datasets.content_hash(table)
    folder = run.staging / run.spec.name
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{sha}.parquet"
    if not final.exists():
        tmp = folder / f".{sha}.{run.run_id}.partial"
        try:
            datasets.write_parquet(table, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return final, sha, final.stat().st_size


def _claim_sql(run: _Run, reader: Any) -> Batch | None:
    """Read the rows past the cursor, stage them and claim them with the cursor's move in one
    transaction. None when no row is past the cursor."""
    while True:
        position = ledger.cursor(run.engine, run.service, run.spec.name)
        got = reader.next_batch(position)
        if got is None:
            return None
        table, after = got
        staged, sha, size = _stage(run, table)
        now = time.time()
        shown = f"sql {run.spec.name} rows {reader.describe(position[0], after[0])}"
        claimed = ledger.reserve(
            run.engine, service=run.service, source=run.spec.name, run_id=run.run_id,
            path=shown, sha256=sha, size=size, claimed_at=now, staged=str(staged),
            cursor_from=position[0], cursor_to=after[0], position=after,
        )  # fmt: skip
        if claimed:
            read = functools.partial(_read_staged, staged, run.contract)
            return Batch(shown, sha, size, now, read, f"{run.spec.name}-{sha[:8]}",
                         position[0], after[0], staged)  # fmt: skip
        ledger.move_cursor(run.engine, run.service, run.spec.name, after)  # taken before


async def _take_stream(run: _Run) -> list[FileOutcome]:
    """Fetch, claim (moving the cursor to the last message's sequence), use, then acknowledge,
    until no message waits."""
    from shipway.data.stream import StreamReader

    reader = StreamReader(run.spec)
    await reader.open()
    outcomes = []
    try:
        while True:
            after, _ = await asyncio.to_thread(
                ledger.cursor, run.engine, run.service, run.spec.name
            )
            got = await reader.fetch(int(after or 0))
            if got is None:
                break
            if not got.messages:
                continue
            table = normalise(records_table(got.records), run.contract)
            batch = await asyncio.to_thread(_claim_stream, run, table, int(after or 0), got)
            if batch is not None:
                outcomes.append(await _take(run, batch))
            await reader.ack(got.messages)  # the rows are committed: never delivered again
            await asyncio.to_thread(ledger.beat, run.engine, run.run_id)
    finally:
        await reader.close()
    return outcomes


def _claim_stream(run: _Run, table: pa.Table, after: int, got: Any) -> Batch | None:
    staged, sha, size = _stage(run, table)
    now = time.time()
    shown = f"stream {run.spec.subject} messages {after + 1}..{got.last}"
    unreadable = [
        (seq, {"message": text}, [{"field": None, "rule": "not_json", "expected": why}])
        for seq, text, why in got.unreadable
    ]
    claimed = ledger.reserve(
        run.engine, service=run.service, source=run.spec.name, run_id=run.run_id, path=shown,
        sha256=sha, size=size, claimed_at=now, staged=str(staged), cursor_from=after,
        cursor_to=got.last, position=(got.last, []), held=unreadable,
    )  # fmt: skip
    if not claimed:  # the same rows were claimed before: move past them only
        ledger.move_cursor(run.engine, run.service, run.spec.name, (got.last, []))
        return None
    read = functools.partial(_read_staged, staged, run.contract)
    return Batch(shown, sha, size, now, read, f"{run.spec.name}-{sha[:8]}", after, got.last,
                 staged, unreadable=unreadable)  # fmt: skip


def _claim_pushed(run: _Run, table: pa.Table) -> Batch | None:
    staged, sha, size = _stage(run, table)
    now = time.time()
    shown = f"push {now:.3f}"
    claimed = ledger.reserve(
        run.engine, service=run.service, source=run.spec.name, run_id=run.run_id, path=shown,
        sha256=sha, size=size, claimed_at=now, staged=str(staged),
    )  # fmt: skip
    if not claimed:
        return None
    return Batch(shown, sha, size, now, functools.partial(_read_staged, staged, run.contract),
                 f"push-{sha[:8]}", staged=staged)  # fmt: skip


async def _take(run: _Run, batch: Batch) -> FileOutcome:
    outcome = await _take_rows(run, batch)
    outcome.replayed = batch.replaying is not None
    if batch.unreadable:
        outcome.rows_in += len(batch.unreadable)
        outcome.rows_bad += len(batch.unreadable)
    return outcome


def _record(run: _Run, batch: Batch, conn: Connection, status: str, **counts: Any) -> None:
    """What became of a batch, its unreadable parts counted as bad rows."""
    if batch.unreadable:
        counts["rows_in"] = counts.get("rows_in", 0) + len(batch.unreadable)
        counts["rows_bad"] = counts.get("rows_bad", 0) + len(batch.unreadable)
    ledger.record_file(conn, service=run.service, source=run.spec.name, sha256=batch.sha256,
                       status=status, **counts)  # fmt: skip


async def _take_rows(run: _Run, batch: Batch) -> FileOutcome:
    """One claimed batch, start to end. Reading, validating and writing run on a worker
    thread, so a server's event loop keeps answering requests meanwhile."""
    spec = run.spec
    shown = batch.shown

    def settle(status: str, held: list[Any], **counts: Any) -> None:
        with run.engine.begin() as conn:
            _hold(run, batch, conn, held)
            _record(run, batch, conn, status, **counts)
        if batch.staged is not None:
            batch.staged.unlink(missing_ok=True)

    try:
        raw = await asyncio.to_thread(batch.read)
    except InputError as exc:
        await asyncio.to_thread(settle, "failed", [], error=exc.message)
        return FileOutcome(shown, "failed", error=exc.message, resumed=batch.resumed)

    keep = _kept_columns(spec)
    contract = run.contract if spec.use != "labels" else None
    if contract is not None:
        sc = schema.check(raw, contract, spec.schema_changes, keep)
    else:
        sc = schema.SchemaCheck(raw)
    ignored = [c["column"] for c in sc.changes if c["change"] == "new_column"]
    diff = sc.changes
    n = raw.num_rows
    if sc.refusal is not None:
        why = f"the batch's columns differ from the contract: {sc.refusal}; the batch is held whole"
        rule = {"field": None, "rule": "schema_change", "expected": sc.refusal}
        held = [(i, _kept_row(r, run.uses.treat), [rule]) for i, r in enumerate(raw.to_pylist())]
        await asyncio.to_thread(settle, "held", held, rows_in=n, rows_bad=n, error=why,
                                schema_diff=diff)  # fmt: skip
        return FileOutcome(shown, "held", n, 0, n, error=why, ignored_columns=ignored,
                           schema_changes=diff, resumed=batch.resumed)  # fmt: skip

    outcome = await _use(run, batch, sc.table, diff, settle)
    outcome.ignored_columns = ignored
    return outcome


def _kept_columns(spec: SourceSpec) -> tuple[str, ...]:
    if spec.use == "train" and spec.label:
        return (spec.label,)
    if spec.use == "labels" and spec.labels is not None:
        cols = spec.labels
        return tuple(c for c in (cols.label, cols.decision_id, cols.key) if c)
    return ()


async def _use(
    run: _Run,
    batch: Batch,
    table: pa.Table,
    diff: list[dict[str, Any]],
    settle: Callable[..., None],
) -> FileOutcome:
    """Validate a batch whose columns passed the schema check, and use its good rows."""
    spec = run.spec
    shown = batch.shown
    if spec.use == "labels":
        return await asyncio.to_thread(_store_labels, run, batch, table, diff)
    extra = {c: table[c] for c in _kept_columns(spec) if c in table.column_names}
    checked = await asyncio.to_thread(run.checker.validate_table, table.drop_columns(list(extra)))
    n, bad = table.num_rows, checked.bad_count
    held = held_rows(checked.bad.to_pylist(), checked.reasons, run.uses.treat)
    share = bad / n if n else 0.0
    limits = spec.max_bad_share
    if bad and share > limits.fail:
        why = (
            f"{bad} of {n} rows ({share:.1%}) break the contract, more than max_bad_share.fail "
            f"({limits.fail:.1%}): the batch is held whole and nothing was used"
        )
        await asyncio.to_thread(settle, "held", held, rows_in=n, rows_bad=bad, error=why,
                                schema_diff=diff)  # fmt: skip
        return FileOutcome(shown, "held", n, 0, bad, error=why, schema_changes=diff,
                           resumed=batch.resumed)  # fmt: skip
    warned = bool(bad) and share > limits.warn
    if spec.use == "train":
        good = checked.good
        if extra:
            index = pa.array(_good_index(n, checked))
            for name, col in extra.items():
                good = good.append_column(name, col.take(index))
        return await asyncio.to_thread(_store_dataset, run, batch, good, held, n, bad, diff, warned)
    return await _score(run, batch, checked, held, n, bad, diff, warned, settle)


async def _score(
    run: _Run,
    batch: Batch,
    checked: Any,
    held: list[Any],
    n: int,
    bad: int,
    diff: list[dict[str, Any]],
    warned: bool,
    settle: Callable[..., None],
) -> FileOutcome:
    spec, uses, shown = run.spec, run.uses, batch.shown
    assert uses.score is not None
    good: pa.Table = checked.good
    total, size = good.num_rows, spec.batch_rows
    starts = list(range(0, total, size))
    done: dict[int, list[dict[str, Any]]] = {}
    failures: list[BaseException] = []
    scored = 0
    window = asyncio.Semaphore(CHUNKS_IN_FLIGHT)

    async def one(start: int) -> None:
        nonlocal scored
        async with window:
            if failures:
                return  # stop at the first failure; chunks under way finish
            try:
                done[start] = await _score_chunk(run, batch, good, start)
            except Exception as exc:  # kept, reported below
                failures.append(exc)
                return
            scored += len(done[start])
            if run.progress is not None:
                run.progress(shown, scored, total)

    await asyncio.gather(*(one(st) for st in starts))
    sink = None
    try:
        if failures:
            raise failures[0]
        answers = [a for st in starts for a in done[st]]
        if total and spec.sink is not None:
            sink = await asyncio.to_thread(
                _write_sink, spec, run.base, batch, run.run_id, good, answers
            )
    except Exception as exc:  # the model, the sink's disk: nothing unscored is lost
        reason = _reason(exc)
        if scored < total:
            why = (
                f"stopped after {scored} of {total} good rows were scored (their decisions "
                f"are logged): {reason}; the rest are quarantined as unscored"
            )
        else:
            why = (
                f"all {total} good rows were scored (their decisions are logged: "
                f"shipway decisions export), but the sink could not be written: {reason}"
            )
        good_index = _good_index(n, checked)
        unscored = [
            (good_index[st + k], _kept_row(row, uses.treat), [UNSCORED | {"expected": reason}])
            for st in starts
            if st not in done
            for k, row in enumerate(good.slice(st, size).to_pylist())
        ]
        await asyncio.to_thread(
            functools.partial(settle, "failed", held + unscored, rows_in=n,
                              rows_good=scored, rows_bad=bad, error=why, schema_diff=diff)
        )  # fmt: skip
        return FileOutcome(shown, "failed", n, scored, bad, error=why,
                           schema_changes=diff, resumed=batch.resumed)  # fmt: skip
    records = answers
    if not (spec.keep_inputs and records):
        await asyncio.to_thread(
            functools.partial(settle, "scored", held, rows_in=n, rows_good=len(records),
                              rows_bad=bad, sink=sink, schema_diff=diff)
        )  # fmt: skip
        version = None
    else:  # the scored rows kept as a dataset version too, recorded with the batch
        version = await asyncio.to_thread(
            _keep_scored, run, batch, checked.good, held, rows_in=n, rows_good=len(records),
            rows_bad=bad, sink=sink, schema_diff=diff,
        )  # fmt: skip
    return FileOutcome(shown, "scored", n, len(records), bad, sink=sink, warned=warned,
                       schema_changes=diff, resumed=batch.resumed, dataset_version=version,
                       answers=answers if spec.sink is None else None)  # fmt: skip


#: Scoring calls a batch keeps under way at once: while the model thread answers and logs
#: one, the event loop prepares the next.
CHUNKS_IN_FLIGHT = 2


async def _score_chunk(run: _Run, batch: Batch, good: pa.Table, start: int) -> list[dict[str, Any]]:
    """Score rows ``start ..`` of a batch's good rows (already validated as a table): their
    values go to the predict path as rows in contract order, under the ids the batch gives
    them. A resumed batch reads back the rows a killed run logged and scores the rest."""
    uses = run.uses
    assert uses.score is not None
    part = good.slice(start, run.spec.batch_rows)
    ids = derived_ids(batch.sha256, batch.claimed_at, start, part.num_rows)
    rows = list(zip(*(c.to_pylist() for c in part.columns), strict=True))
    logged: dict[str, dict[str, Any]] = {}
    if batch.resumed and uses.answers is not None:
        logged = await asyncio.to_thread(uses.answers, ids)
    todo = [k for k, i in enumerate(ids) if i not in logged]
    fresh: list[dict[str, Any]] = []
    if todo:
        body = await uses.score(
            [rows[k] for k in todo], f"source:{run.spec.name}", [ids[k] for k in todo]
        )
        fresh = body["decisions"]
    it = iter(fresh)
    return [logged[i] if i in logged else next(it) for i in ids]


def _save_version(
    run: _Run, batch: Batch, good: pa.Table, held: list[Any], status: str, **counts: Any
) -> dict[str, Any]:
    """The good rows as a dataset version, recorded with the batch (its quarantined rows,
    its status) in one transaction; the version's record."""
    assert run.uses.datasets_dir is not None
    with run.engine.begin() as conn:
        version = datasets.save(
            conn, service=run.service, source=run.spec.name, run_id=run.run_id, table=good,
            folder=run.uses.datasets_dir, contract=run.contract,
            cursor_from=batch.cursor_from, cursor_to=batch.cursor_to,
        )  # fmt: skip
        _hold(run, batch, conn, held)
        if not version["new"]:
            counts["error"] = f"the same rows as version {version['version']}"
        counts.setdefault("sink", version["path"])  # a train batch's output is its version
        _record(run, batch, conn, status, **counts)
    if batch.staged is not None:
        batch.staged.unlink(missing_ok=True)
    return version


def _keep_scored(run: _Run, batch: Batch, good: pa.Table, held: list[Any], **counts: Any) -> int:
    return int(_save_version(run, batch, good, held, "scored", **counts)["version"])


def _store_dataset(
    run: _Run,
    batch: Batch,
    good: pa.Table,
    held: list[Any],
    n: int,
    bad: int,
    diff: list[dict[str, Any]],
    warned: bool,
) -> FileOutcome:
    """A train batch: its good rows kept as a dataset version."""
    version = _save_version(run, batch, good, held, "stored", rows_in=n,
                            rows_good=good.num_rows, rows_bad=bad, schema_diff=diff)  # fmt: skip
    note = None if version["new"] else f"the same rows as version {version['version']}"
    return FileOutcome(batch.shown, "stored", n, good.num_rows, bad, sink=version["path"],
                       warned=warned, schema_changes=diff, resumed=batch.resumed,
                       dataset_version=int(version["version"]), error=note)  # fmt: skip


def _store_labels(
    run: _Run, batch: Batch, table: pa.Table, diff: list[dict[str, Any]]
) -> FileOutcome:
    """Rows as labels, joined by decision id or key; rows that join nothing or carry a label
    the output spec refuses are quarantined. Labels and the batch's record commit together."""
    cols = run.spec.labels
    assert cols is not None and run.uses.label is not None
    rows = table.to_pylist()
    n = len(rows)
    held: list[Any] = []
    items: list[dict[str, Any]] = []
    index: list[int] = []
    for i, r in enumerate(rows):
        reasons = []
        if cols.label not in r or r.get(cols.label) is None:
            reasons.append({"field": cols.label, "rule": "required", "expected": "a label"})
        ref = cols.decision_id or cols.key or ""
        if r.get(ref) is None:
            reasons.append({"field": ref, "rule": "required", "expected": f"a {ref}"})
        if reasons:
            held.append((i, _kept_row(r, run.uses.treat), reasons))
            continue
        how = "id" if cols.decision_id else "key"
        items.append({how: r[ref], "label": r[cols.label]})
        index.append(i)
    stored: list[dict[str, Any]] = []
    with run.engine.begin() as conn:
        while items:
            try:
                with conn.begin_nested():
                    stored = run.uses.label(conn, items)
                break
            except FeedbackInvalid as exc:
                bad_items = {int(p["row"]): p for p in exc.details.get("fields") or []}
                if not bad_items:
                    raise
                keep_items, keep_index = [], []
                for k, (it, i) in enumerate(zip(items, index, strict=True)):
                    p = bad_items.get(k)
                    if p is None:
                        keep_items.append(it)
                        keep_index.append(i)
                    else:
                        rule = {"field": p.get("field"), "rule": p.get("rule"),
                                "expected": p.get("expected")}  # fmt: skip
                        held.append((i, _kept_row(rows[i], run.uses.treat), [rule]))
                items, index = keep_items, keep_index
        _hold(run, batch, conn, held)
        _record(run, batch, conn, "labelled", rows_in=n,
                           rows_good=len(stored), rows_bad=len(held), schema_diff=diff)  # fmt: skip
    if batch.staged is not None:
        batch.staged.unlink(missing_ok=True)
    share = len(held) / n if n else 0.0
    return FileOutcome(batch.shown, "labelled", n, len(stored), len(held), schema_changes=diff,
                       resumed=batch.resumed,
                       warned=bool(held) and share > run.spec.max_bad_share.warn)  # fmt: skip


def _hold(run: _Run, batch: Batch, conn: Connection, held: list[Any]) -> None:
    """Quarantine a batch's bad rows; in a replay, keep the rows still bad (with their reasons
    as of now) and mark the others as moved on."""
    if batch.replaying is None:
        ledger.hold_rows(conn, service=run.service, source=run.spec.name, run_id=run.run_id,
                         file=batch.shown, rows=held)  # fmt: skip
        return
    seqs = batch.replaying
    still = {int(i): rules for i, _, rules in held}
    ledger.still_held(conn, [(seqs[i], rules) for i, rules in still.items()])
    ledger.mark_replayed(conn, [q for i, q in enumerate(seqs) if i not in still], run.run_id)


#: How a good row that could not be scored (the model or the sink failed) is quarantined.
UNSCORED = {"field": None, "rule": "unscored"}


def _good_index(n: int, checked: Any) -> list[int]:
    """The batch's row number of each good row, in order."""
    bad = {int(r[0]["row"]) for r in checked.reasons if r}
    return [i for i in range(n) if i not in bad]


def _kept_row(row: dict[str, Any], treat: Treat | None) -> dict[str, Any]:
    return {k: treat(k, v) for k, v in row.items()} if treat is not None else row


def held_rows(
    rows: list[dict[str, Any]], reasons: list[list[Any]], treat: Treat | None
) -> list[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    out = []
    for row, broken in zip(rows, reasons, strict=True):
        index = int(broken[0]["row"]) if broken else -1
        kept = _kept_row(row, treat)
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
    batch: Batch,
    run_id: str,
    good: pa.Table,
    answers: list[dict[str, Any]],
) -> str:
    """The batch's answers beside its rows: to a folder, written to a hidden name and renamed
    into place, so a reader of the sink never sees half a file; or to a SQL table, in one
    transaction."""
    assert spec.sink is not None
    out = good
    for name, values in (
        ("decision_id", [a["id"] for a in answers]),
        ("output", [a["output"] for a in answers]),
        ("confidence", [a["confidence"] for a in answers]),
        ("model_version", [a["model_version"] for a in answers]),
        ("route", [a["route"] for a in answers]),
    ):
        out = out.append_column(name, _column(values))
    if spec.sink.table is not None:
        from shipway.data.sql import write_table

        return write_table(spec.sink, out, batch.sha256)
    folder = _sink_dir(spec, base)
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if spec.sink.format == "parquet" else "csv"
    final = folder / f"{batch.stem}.{batch.sha256[:12]}.{ext}"
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


__all__ = [
    "Batch",
    "FileOutcome",
    "Progress",
    "RunResult",
    "Score",
    "Uses",
    "held_rows",
    "replay",
    "run_source",
]

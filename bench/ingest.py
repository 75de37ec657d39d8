"""Ingestion and batch scoring: a 1,000,000 x 20 Parquet file with 0.15% bad rows, one run.

    python bench/ingest.py [--rows 200000] [--bad 0.0015] [--repeat 3] [--batch-rows N]
                           [--no-profile] [--profile-hz 200] [--top 15] [--keep]
                           [--skip-ingest] [--skip-score]
    python bench/ingest.py --rows 1000000      # the issue's size (about 4 minutes)

The pilot and the data are generated here (NumPy, seeded, no downloads). The pilot is a
scikit-learn pipeline (a ColumnTransformer scaling 17 numbers and one-hot encoding 3
categories, then a LogisticRegression) trained on 20,000 rows of 14 float, 3 int and 3
category columns, and registered with ``shipway init`` (the CLI), whose inferred contract
(ranges widened by 10%, categories as seen, nothing nullable) is the contract of everything
below. The file is 1,000,000 (``--rows``) new rows of the same kind inside that contract,
written as one Parquet file, with a share of them (``--bad``, default 0.15%) broken on
purpose, one problem per row: an out-of-range number, an unknown category, or a null.

(1) Ingest, on one core (the process pinned to one CPU, Arrow and BLAS held to one thread),
    end to end and per stage, best of ``--repeat``:
      read        ``shipway.data.files.read_table`` (the sources' reader) of the file;
      validate    ``Contract(spec).validate_table``: good rows cast, bad rows split off, each
                  explained (field, rule, value, expected);
      quarantine  the bad rows with their reasons, built as ``data/batch.py`` builds them,
                  committed by ``shipway.data.ledger.hold_rows`` to a SQLite store opened by
                  ``open_store`` (migrations applied), as the project builds stores;
      write+hash  the good rows kept as a dataset version: ``shipway.data.datasets.save``
                  (content hash of the rows, a Parquet file named by it, a version row). The
                  hash and the Parquet write are also timed apart.
    Baseline in the same run: the same file read, written and hashed with no validation and
    no quarantine (the floor of any pipeline that keeps a dataset version). Target: 2,000,000
    rows/s end to end. It also checks that every run gives the same hash and that the same
    rows saved again make no new version.

(2) Batch scoring of the same file through the full decision path: the workspace's manifest
    gets a ``sources:`` entry (kind files, use score, Parquet sink; ``batch_rows`` is
    SourceSpec's default unless ``--batch-rows`` is given) and the source is run in-process as
    ``shipway sources run`` runs it: ``Service.open``, ``start(schedule=False)``,
    ``Service.run_source``. Every good row must become a logged decision on SQLite (counted
    in the ``decisions`` table at the end), every bad row a quarantined row, and the sink
    must hold every good row. Target: 100,000 rows/s. Beside it, in the same run, on the same
    good rows: the model's own ``predict_proba`` on the whole DataFrame, in ``batch_rows``
    slices, and in ``batch_rows`` calls fed as Shipway feeds the model (row tuples ->
    ``DataFrame.from_records``); a plain ``sqlite3`` ``executemany`` of decision-shaped rows
    (the 16 columns the decision log writes, into an empty ``decisions`` table with the
    store's own schema and indexes, WAL, synchronous=NORMAL) in one transaction, in
    ``batch_rows``-row transactions, and in one transaction with ids in random order. The
    process's CPU time and each thread's (from /proc) are printed, and a timeline of the run
    (when the first scoring call was answered, per-call time, time after the last call).

(3) Profile: the same file scored again (a second source on the same folder, so the
    processed-files ledger takes it again), under a stack sampler of this file (no py-spy or
    pyinstrument is installed, and cProfile sees one thread and slows small calls): every
    ``1/--profile-hz`` s it reads every thread's Python stack (``sys._current_frames``) and
    its CPU clock (``pthread_getcpuclockid``), and charges the CPU time each thread used
    since the previous round to where the thread is found: once by stage (the first rule its
    stack matches: decision log commit, decision rows, model input DataFrame, scikit-learn,
    per-call validation, sink, ...) and once by its innermost frame. A thread waiting (for
    work, for I/O, for the GIL) uses no CPU and weighs nothing; a long C call that holds the
    GIL (``to_pylist`` of the whole file) delays the next round but its CPU time is still
    charged to its line. Stages are given in CPU seconds and microseconds per good row;
    time a run spends waiting on the disk is in neither (compare the process CPU and the
    wall time printed in (2)).

No figure is asserted. The script exits non-zero when a count is off (decisions logged, rows
quarantined, rows in the sink or the dataset, the dataset's hash).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import asyncio
import collections
import gc
import linecache
import math
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import init_shipway

from shipway.contract import Contract
from shipway.manifest import ContractSpec
from shipway.store.artifacts import sha256_file

N_FLOAT, N_INT = 14, 3
CATEGORIES = {
    "region": ["north", "south", "east", "west", "centre"],
    "plan": ["basic", "plus", "pro", "enterprise"],
    "channel": ["web", "store", "phone"],
}
SOURCE = "bench"
PROFILED = "bench-profile"
TARGETS = {"ingest": 2_000_000, "score": 100_000}


# -- data -----------------------------------------------------------------------------------


def clean_columns(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rows as they should be: 14 normal floats, 3 ints in [0, 100), categories as codes."""
    cols: dict[str, np.ndarray] = {}
    for i in range(N_FLOAT):
        cols[f"f{i}"] = rng.normal(50.0 + 3 * i, 10.0, rows)
    for i in range(N_INT):
        cols[f"i{i}"] = rng.integers(0, 100, rows)
    for name, values in CATEGORIES.items():
        cols[name] = rng.integers(0, len(values), rows)
    return cols


def build_pilot(work: Path, seed: int, rows: int = 20_000) -> tuple[Path, Path]:
    """pilot.joblib (ColumnTransformer + LogisticRegression on the 20 fields) and data.csv."""
    import joblib
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(seed + 1)
    cols = clean_columns(rows, rng)
    frame = pd.DataFrame(
        {
            n: (np.array(CATEGORIES[n], dtype=object)[v] if n in CATEGORIES else v)
            for n, v in cols.items()
        }
    )
    logit = (
        0.08 * (frame["f0"] - 50)
        - 0.05 * (frame["f1"] - 53)
        + 0.02 * (frame["i0"] - 50)
        + (frame["region"] == "north") * 0.8
        - (frame["plan"] == "basic") * 0.6
    )
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    numeric = [n for n in frame.columns if n not in CATEGORIES]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), numeric),
                ("cat", OneHotEncoder(handle_unknown="ignore"), list(CATEGORIES)),
            ]
        ),
        LogisticRegression(max_iter=2000),
    ).fit(frame, y)
    joblib.dump(model, work / "pilot.joblib")
    frame.assign(label=y).to_csv(work / "data.csv", index=False)
    return work / "pilot.joblib", work / "data.csv"


def build(
    rows: int, bad_share: float, seed: int, spec: ContractSpec
) -> tuple[pa.Table, int, dict[str, int]]:
    """The file's table (good values inside ``spec``'s ranges and categories), how many rows
    were broken on purpose, and how (problem: rows)."""
    rng = np.random.default_rng(seed)
    cols = clean_columns(rows, rng)
    fields = {f.name: f for f in spec.inputs}
    for name, col in cols.items():
        f = fields[name]
        if f.type in ("int", "float") and (f.min is not None or f.max is not None):
            lo, hi = f.min, f.max  # the inferred range is the data's, widened
            if f.type == "int":
                lo = None if lo is None else math.ceil(lo)
                hi = None if hi is None else math.floor(hi)
            np.clip(col, lo, hi, out=col)
    names = list(cols)
    null = {n: np.zeros(rows, dtype=bool) for n in names}
    n_bad = round(rows * bad_share)
    bad_rows = rng.choice(rows, size=n_bad, replace=False)
    kinds = rng.integers(0, 3, n_bad)  # 0 out of range, 1 unknown category, 2 null
    numeric = [n for n in names if n not in CATEGORIES]
    cats = list(CATEGORIES)
    how = {"out of range": 0, "unknown category": 0, "null": 0}
    for r, kind in zip(bad_rows.tolist(), kinds.tolist(), strict=True):
        if kind == 0:
            which = numeric[rng.integers(len(numeric))]
            cols[which][r] = int(fields[which].max or 0) + 1000
            how["out of range"] += 1
        elif kind == 1:
            which = cats[rng.integers(len(cats))]
            cols[which][r] = len(CATEGORIES[which])  # the code of "atlantis": not declared
            how["unknown category"] += 1
        else:
            null[names[rng.integers(len(names))]][r] = True
            how["null"] += 1
    arrays: dict[str, pa.Array] = {}
    for name in names:
        if name in CATEGORIES:
            words = pa.array([*CATEGORIES[name], "atlantis"])
            codes = pa.array(cols[name].astype(np.int32), mask=null[name])
            arrays[name] = pa.DictionaryArray.from_arrays(codes, words).dictionary_decode()
        else:
            arrays[name] = pa.array(cols[name], mask=null[name])
    return pa.table(arrays), n_bad, how


# -- helpers ----------------------------------------------------------------------------------


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by each live thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = collections.defaultdict(float)
    for entry in os.scandir("/proc/self/task"):
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        name = names.get(int(entry.name), f"thread {entry.name}")
        if name.startswith("asyncio_"):
            name = "asyncio to_thread workers"
        out[name] += (int(fields[11]) + int(fields[12])) / _TICK
    return dict(out)


def best_of(repeat: int, fn: Any, *args: Any) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:14,.0f}" if seconds > 0 else f"{'-':>14}"


# -- (1) ingest -------------------------------------------------------------------------------


def ingest_once(
    path: Path, spec: ContractSpec, engine: Any, out_dir: Path, run: int
) -> dict[str, Any]:
    from shipway.data import datasets as ds
    from shipway.data import ledger
    from shipway.data.batch import held_rows
    from shipway.data.files import read_table
    from shipway.decisions.ids import new_id

    run_id = new_id()
    t0 = time.perf_counter()
    table = read_table(path, "parquet", spec)
    t1 = time.perf_counter()
    checked = Contract(spec).validate_table(table)
    t2 = time.perf_counter()
    held = held_rows(checked.bad.to_pylist(), checked.reasons, None)
    with engine.begin() as conn:
        ledger.hold_rows(
            conn, service="ingest", source="bench", run_id=run_id, file=path.name, rows=held
        )
    t3 = time.perf_counter()
    with engine.begin() as conn:  # a source of its own per run, so every run writes its version
        rec = ds.save(
            conn, service="ingest", source=f"bench-{run}", run_id=run_id,
            table=checked.good, folder=out_dir, contract=spec,
        )  # fmt: skip
    digest, final = rec["sha256"], Path(rec["path"])
    t4 = time.perf_counter()
    return {
        "read": t1 - t0,
        "validate": t2 - t1,
        "quarantine": t3 - t2,
        "write+hash": t4 - t3,
        "total": t4 - t0,
        "good": checked.good.num_rows,
        "bad": checked.bad_count,
        "held": len(held),
        "sha256": digest,
        "file": final,
        "table": checked.good,
    }


def bare_once(path: Path, out_dir: Path, run: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = pq.read_table(path)
    t1 = time.perf_counter()
    tmp = out_dir / f".bare.{run}.partial"
    pq.write_table(table, tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, out_dir / f"bare-{digest[:16]}.parquet")
    t2 = time.perf_counter()
    return {"read": t1 - t0, "write+hash": t2 - t1, "total": t2 - t0}


def part_ingest(
    path: Path, spec: ContractSpec, work: Path, rows: int, n_bad: int, repeat: int
) -> bool:
    from sqlalchemy import text

    from shipway.store import open_store

    folder = work / "ingest"
    out_dir = folder / "datasets"
    out_dir.mkdir(parents=True)
    store = open_store(f"sqlite:///{folder / '.shipway' / 'shipway.db'}", folder / ".shipway")
    from shipway.data import datasets as ds

    pinned = None
    if hasattr(os, "sched_setaffinity"):
        before = os.sched_getaffinity(0)
        pinned = min(before)
        os.sched_setaffinity(0, {pinned})
    try:
        runs = []
        for k in range(repeat):
            runs.append(ingest_once(path, spec, store.engine, out_dir, k))
            if k < repeat - 1:
                runs[-1].pop("table")  # keep one good table in memory at most
        bares = [bare_once(path, out_dir, k) for k in range(repeat)]
        good = runs[-1]["table"]
        sub: dict[str, float] = {}  # what the dataset version's stage is made of, timed apart
        sub["content hash"] = best_of(repeat, ds.content_hash, good)[0]
        sub["Parquet write"] = best_of(
            repeat, ds.write_parquet, good, out_dir / ".write-only.parquet"
        )[0]
        with store.engine.begin() as conn:  # the same rows again: no new version
            again = ds.save(
                conn, service="ingest", source="bench-0", run_id="again", table=good,
                folder=out_dir, contract=spec,
            )  # fmt: skip
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, before)
    with store.engine.connect() as conn:
        quarantined = conn.execute(text("SELECT count(*) FROM quarantine")).scalar_one()
    store.close()

    best = min(runs, key=lambda r: r["total"])
    bare = min(bares, key=lambda r: r["total"])
    hashes = {r["sha256"] for r in runs}
    written = pq.read_metadata(best["file"]).num_rows
    where = f"pinned to CPU {pinned}" if pinned is not None else "not pinned (no affinity call)"
    how = "shipway.data.datasets.save (rows hashed, Parquet named by the hash, a version row)"
    print(f"(1) ingest: read, validate, quarantine, keep a dataset version; one core ({where})")
    print(f"    best of {repeat} runs each, {rows:,} rows; dataset version by {how}")
    print(f"    {'stage':34} {'seconds':>8} {'rows/s':>14} {'share':>6}")
    for stage in ("read", "validate", "quarantine", "write+hash"):
        s = best[stage]
        print(f"    {stage:34} {s:8.3f} {rate(rows, s)} {s / best['total']:6.0%}")
    for label, s in sub.items():
        print(f"      {'of which ' + label:32} {s:8.3f} {rate(rows, s)}")
    print(f"    {'(a) end to end':34} {best['total']:8.3f} {rate(rows, best['total'])}")
    print(
        f"    {'(b) bare: read, write, sha256 file':34} {bare['total']:8.3f} "
        f"{rate(rows, bare['total'])}   (read {bare['read']:.3f} s, write+hash "
        f"{bare['write+hash']:.3f} s)"
    )
    ratio = rows / best["total"] / TARGETS["ingest"]
    print(
        f"    ratio (a) rows/s to the target of {TARGETS['ingest']:,} rows/s: {ratio:.2f}   "
        f"time (a)/(b): {best['total'] / bare['total']:.2f}"
    )
    same = len(hashes) == 1 and not again["new"]
    print(
        f"    {best['good']:,} good rows in the dataset (sha256 {best['sha256'][:16]}..., the same "
        "in every run, and saving them again made no new version: "
        f"{'yes' if same else 'NO'}); {best['bad']:,} bad rows quarantined per run "
        f"({quarantined:,} in the store after {repeat} runs)"
    )
    ok = (
        best["bad"] == n_bad
        and best["held"] == n_bad
        and quarantined == n_bad * repeat
        and written == rows - n_bad
        and same
    )
    if not ok:
        print("    warning: a count is off (bad rows, quarantined rows or dataset rows)")
    return ok


# -- (3) the sampler ---------------------------------------------------------------------------

#: (path fragment, function or None, stage), tried in this order against the whole stack of a
#: busy sample; the first rule any frame matches names the sample's stage.
STAGES: list[tuple[str, str | None, str]] = [
    ("shipway/decisions/log.py", "_decision_params", "decision log: row -> params (orjson)"),
    ("shipway/store/writer.py", "_commit", "decision log: executemany + commit (SQLite)"),
    ("shipway/serving/chain.py", "record", "decision rows built (chain.record)"),
    ("shipway/models/predictor.py", "_frame", "model input: DataFrame.from_records per call"),
    ("/sklearn/", None, "model: scikit-learn predict_proba"),
    ("shipway/models/predictor.py", None, "model: predictor other (argmax, lists)"),
    ("shipway/serving/router.py", None, "model runner other (split, settle)"),
    ("shipway/contract/validate.py", "validate_records", "validation per call (validate_records)"),
    ("shipway/contract/validate.py", "validate_table", "validation of the file (validate_table)"),
    ("shipway/data/batch.py", "_write_sink", "sink: answers to columns, Parquet write"),
    ("shipway/data/batch.py", "held_rows", "quarantine rows built"),
    ("shipway/data/ledger.py", None, "quarantine + ledger commits"),
    ("shipway/data/files.py", "new_files", "finding new files (sha256 of the file)"),
    ("shipway/data/files.py", "read_table", "reading the file"),
    ("shipway/serving/predict.py", None, "predict path other (ids, answer dicts)"),
    ("shipway/serving/chain.py", None, "guard chain other"),
    ("shipway/concurrency.py", None, "hand-offs (BatchWorker)"),
    ("shipway/data/batch.py", None, "batch.py: {line}"),
]


class Sampler:
    """Samples every thread's Python stack on a thread of its own; see the module's (3)."""

    def __init__(self, hz: float) -> None:
        self.interval = 1.0 / hz
        self.samples = 0
        # CPU seconds: each thread's CPU time since the previous round, charged to where the
        # thread is found (waiting threads use none, so they weigh nothing)
        self.by_stage: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.by_leaf: dict[str, float] = collections.defaultdict(float)
        self.busy: dict[str, float] = collections.defaultdict(float)
        self._clocks: dict[int, int] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.wall = 0.0

    def __enter__(self) -> Sampler:
        for t in threading.enumerate():  # threads already running: count from now
            if t.ident is not None:
                self._cpu[t.ident] = self._cpu_of(t.ident) or 0.0
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self._t0

    def _cpu_of(self, ident: int) -> float | None:
        try:
            clock = self._clocks.get(ident)
            if clock is None:
                clock = self._clocks[ident] = time.pthread_getcpuclockid(ident)
            return time.clock_gettime(clock)
        except OSError:  # the thread has ended
            return None

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                cpu = self._cpu_of(ident)
                if cpu is None:
                    continue
                used, self._cpu[ident] = cpu - self._cpu.get(ident, 0.0), cpu
                if used > 0:
                    self._take(names.get(ident, str(ident)), frame, used)

    def _take(self, thread: str, frame: Any, used: float) -> None:
        if thread.startswith("asyncio_"):
            thread = "asyncio to_thread workers"
        self.busy[thread] += used
        stack = []
        f = frame
        while f is not None:
            stack.append((f.f_code.co_filename, f.f_code.co_name, f.f_lineno))
            f = f.f_back
        self.by_stage[(thread, self._stage(stack))] += used
        code = frame.f_code
        self.by_leaf[f"{_short(code.co_filename)}:{frame.f_lineno} {code.co_name}"] += used

    @staticmethod
    def _stage(stack: list[tuple[str, str, int]]) -> str:
        for frag, func, label in STAGES:
            for path, name, line in stack:
                if frag in path and (func is None or name == func):
                    if "{line}" in label:
                        text = linecache.getline(path, line).strip()[:60]
                        return label.format(line=f"line {line}: {text}")
                    return label
        leaf = stack[0]
        if "/asyncio/" in leaf[0] or leaf[0].endswith("selectors.py"):
            return "event loop (callbacks, select)"
        top = next((p for p, _n, _l in stack if "/shipway/" in p), None)
        return f"other, under {_short(top)}" if top else "other"


def _short(path: str | None) -> str:
    if path is None:
        return "?"
    if "/src/shipway/" in path:
        return "shipway/" + path.split("/src/shipway/", 1)[1]
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    return Path(path).name


def largest(d: dict[Any, float], n: int) -> list[tuple[Any, float]]:
    return sorted(d.items(), key=lambda kv: -kv[1])[:n]


def print_profile(s: Sampler, good: int, top: int) -> None:
    gap = s.wall / s.samples if s.samples else 0.0
    total = sum(s.busy.values())
    print(
        f"    wall {s.wall:.2f} s, {s.samples:,} sampling rounds ({gap * 1000:.1f} ms apart on "
        f"average); CPU {total:.2f} s sampled, by thread: "
        + ", ".join(f"{t} {v:.2f} s" for t, v in largest(s.busy, 9))
    )
    print(f"    {'stage (thread)':62} {'CPU s':>8} {'us/row':>7} {'share':>6}")
    for (thread, stage), secs in largest(s.by_stage, 18):
        label = f"{stage} ({thread})"
        print(f"    {label[:62]:62} {secs:8.2f} {secs / good * 1e6:7.2f} {secs / total:6.1%}")
    print(f"    top {top} innermost frames (share of sampled CPU time, all threads):")
    for leaf, secs in largest(s.by_leaf, top):
        print(f"      {secs / total:6.1%}  {leaf}")


# -- (2) batch scoring ----------------------------------------------------------------------


def add_sources(manifest: Path, path: Path, batch_rows: int | None) -> None:
    """The manifest's ``sources:`` (two scoring sources on one folder: the measured run and
    the profiled one) and the file dropped into that folder, settled."""
    doc = yaml.safe_load(manifest.read_text())
    doc["monitor"] = {**doc.get("monitor", {}), "schedule": False}
    doc["sources"] = [
        {
            "name": name,
            "use": "score",
            "kind": "files",
            "path": "incoming/*.parquet",
            "format": "parquet",
            "settle_s": 0,
            "sink": {"path": f"scored-{name}", "format": "parquet"},
            "max_bad_share": {"warn": 0.01, "fail": 0.5},
        }
        for name in (SOURCE, PROFILED)
    ]
    if batch_rows is not None:
        for source in doc["sources"]:
            source["batch_rows"] = batch_rows
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    incoming = manifest.parent / "incoming"
    incoming.mkdir(exist_ok=True)
    target = incoming / path.name
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    then = time.time() - 60
    os.utime(target, (then, then))


async def score_run(service: Any, name: str) -> dict[str, Any]:
    marks: list[tuple[float, int]] = []

    def progress(_file: str, done: int, _total: int) -> None:
        marks.append((time.perf_counter(), done))

    cpu0, threads0 = cpu_s(), thread_cpu()
    t0 = time.perf_counter()
    result = await service.run_source(name, "system:bench", progress)
    t1 = time.perf_counter()
    threads1, cpu1 = thread_cpu(), cpu_s()
    used = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
    return {"result": result, "seconds": t1 - t0, "t0": t0, "t1": t1, "marks": marks,
            "cpu": cpu1 - cpu0, "threads": used}  # fmt: skip


def sqlite_baseline(work: Path, good: pa.Table, batch: int) -> dict[str, Any]:
    """Plain sqlite3: decision-shaped rows (the 16 columns the decision log writes) inserted
    with ``executemany`` into an empty ``decisions`` table made by the store's own schema
    (indexes included), WAL, synchronous=NORMAL, each variant in a database of its own."""
    import uuid

    import orjson

    from shipway.decisions.ids import new_ids
    from shipway.store import open_store

    folder = work / "sqlite-baseline"
    store = open_store(f"sqlite:///{folder / 'schema.db'}", folder)
    store.close()
    with sqlite3.connect(folder / "schema.db") as con:
        ddl = [
            r[0]
            for r in con.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'decisions' AND sql IS NOT NULL"
            )
        ]
    rows = good.to_pylist()
    n = len(rows)
    cols = (
        "id, ts, service, model_version, route, inputs, output, confidence, latency_ms, caller, "
        "error, reason, cost, label_key, prompt_tokens, completion_tokens"
    )
    sql = f"INSERT INTO decisions ({cols}) VALUES ({', '.join(['?'] * 16)})"

    def params(ids: list[str]) -> list[tuple[Any, ...]]:
        now = time.time()
        return [
            (ids[k], now, "bench", 1, "champion", orjson.dumps(r).decode(), '"yes"', 0.73,
             1.5, "source:bench", None, None, None, None, None, None)
            for k, r in enumerate(rows)
        ]  # fmt: skip

    def insert(name: str, values: list[tuple[Any, ...]], size: int) -> tuple[float, int]:
        db = sqlite3.connect(folder / f"{name}.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for stmt in ddl:
            db.execute(stmt)
        t0 = time.perf_counter()
        for s in range(0, len(values), size):
            db.execute("BEGIN")
            db.executemany(sql, values[s : s + size])
            db.execute("COMMIT")
        seconds = time.perf_counter() - t0
        count = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        db.close()
        return seconds, count

    t0 = time.perf_counter()
    ordered = params(new_ids(n))
    prep = time.perf_counter() - t0
    out: dict[str, Any] = {"prep": prep}
    out["one"], c1 = insert("one", ordered, n)
    out["many"], c2 = insert("many", params(new_ids(n)), batch)
    out["random"], c3 = insert("random", params([str(uuid.uuid4()) for _ in range(n)]), n)
    out["counts"] = (c1, c2, c3)
    return out


def model_baseline(model_path: Path, good: pa.Table, batch: int) -> tuple[float, float, float]:
    """predict_proba on the whole frame, in ``batch``-row slices, and in ``batch``-row calls
    fed as Shipway feeds the model (row tuples -> DataFrame.from_records)."""
    import joblib
    import pandas as pd

    model = joblib.load(model_path)
    names = [str(n) for n in model.feature_names_in_]
    frame = good.select(names).to_pandas()
    t0 = time.perf_counter()
    model.predict_proba(frame)
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, len(frame), batch):
        model.predict_proba(frame.iloc[s : s + batch])
    sliced = time.perf_counter() - t0
    tuples = list(zip(*(good.column(n).to_pylist() for n in names), strict=True))
    t0 = time.perf_counter()
    for s in range(0, len(tuples), batch):
        model.predict_proba(pd.DataFrame.from_records(tuples[s : s + batch], columns=names))
    as_shipway = time.perf_counter() - t0
    return whole, sliced, as_shipway


def count_rows(db: Path, sql: str, *args: Any) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(sql, args).fetchone()[0])
    finally:
        con.close()


def part_score(
    path: Path, spec: ContractSpec, manifest: Path, a: argparse.Namespace, n_bad: int
) -> bool:
    work = manifest.parent.parent
    add_sources(manifest, path, a.batch_rows)
    if a.batch_rows is None:
        from shipway.manifest import SourceSpec

        a.batch_rows = SourceSpec.model_fields["batch_rows"].default
    svc = manifest.parent
    db = svc / ".shipway" / "shipway.db"
    os.environ["SHIPWAY_DATABASE_URL"] = ""  # the workspace's own SQLite store
    os.environ.setdefault("SHIPWAY_SECRET_KEY", os.urandom(32).hex())
    from shipway.service import Service
    from shipway.settings import Settings

    service = Service.open(manifest, Settings())
    service.start(schedule=False)
    try:
        gc.collect()
        run = asyncio.run(score_run(service, SOURCE))
        sampler = None
        if not a.no_profile:
            gc.collect()
            with Sampler(a.profile_hz) as sampler:
                prof = asyncio.run(score_run(service, PROFILED))
    finally:
        service.stop()

    res = run["result"]
    rows, good = a.rows, a.rows - n_bad
    out = res.files[0] if res.files else None
    logged = count_rows(db, "SELECT count(*) FROM decisions WHERE caller = ?", f"source:{SOURCE}")
    held = count_rows(db, "SELECT count(*) FROM quarantine WHERE run_id = ?", res.run_id)
    sink = pq.read_metadata(svc / out.sink).num_rows if out is not None and out.sink else 0

    checked = Contract(spec).validate_table(pq.read_table(path))
    whole, sliced, as_shipway = model_baseline(work / "pilot.joblib", checked.good, a.batch_rows)
    sq = sqlite_baseline(work, checked.good, a.batch_rows)
    t_prep, t_one, t_many, t_rand = sq["prep"], sq["one"], sq["many"], sq["random"]

    secs = run["seconds"]
    marks = run["marks"]
    print()
    print(
        f"(2) batch scoring: Service.run_source on {rows:,} rows ({good:,} good), "
        f"{a.batch_rows} rows per scoring call (the source's batch_rows), decision log on SQLite"
    )
    print(f"    {'':52} {'seconds':>8} {'rows/s':>14}")
    label = "(a) shipway: find, read, validate, score, log, sink"
    print(f"    {label:52} {secs:8.2f} {rate(good, secs)}")
    print(f"    {'(b) model predict_proba, whole frame':52} {whole:8.2f} {rate(good, whole)}")
    print(
        f"    {f'(c) model predict_proba, {a.batch_rows}-row slices':52} {sliced:8.2f} "
        f"{rate(good, sliced)}"
    )
    print(
        f"    {'(c2) as (c), rows as tuples -> DataFrame.from_records':52} {as_shipway:8.2f} "
        f"{rate(good, as_shipway)}"
    )
    print(
        f"    {'(d) sqlite3 executemany, decision rows, 1 transaction':52} {t_one:8.2f} "
        f"{rate(good, t_one)}"
    )
    print(
        f"    {f'(e) as (d), {a.batch_rows}-row transactions':52} {t_many:8.2f} "
        f"{rate(good, t_many)}"
    )
    print(f"    {'(d2) as (d), ids in random order (uuid4)':52} {t_rand:8.2f} {rate(good, t_rand)}")
    print(
        f"    {'    (building the rows of (d): ids, orjson of inputs)':52} {t_prep:8.2f} "
        f"{rate(good, t_prep)}"
    )
    print(
        f"    ratio (a) rows/s to the target of {TARGETS['score']:,} rows/s: "
        f"{good / secs / TARGETS['score']:.2f}   rows/s (a)/(b) {whole / secs:.3f}   "
        f"(a)/(c2) {as_shipway / secs:.2f}   (a)/(d) {t_one / secs:.2f}   "
        f"(a)/(e) {t_many / secs:.2f}"
    )
    if marks:
        first, last = marks[0][0] - run["t0"], marks[-1][0] - run["t0"]
        calls = len(marks)
        per_call = (last - first) / max(1, calls - 1)
        print(
            f"    timeline of (a): first scoring call answered at {first:.2f} s (finding and "
            f"hashing the file, reading, validate_table, to_pylist, one call); {calls:,} calls, "
            f"{per_call * 1000:.2f} ms each ({a.batch_rows / per_call:,.0f} rows/s while "
            f"scoring); sink, quarantine and ledger after the last call: {secs - last:.2f} s"
        )
    cpu = run["cpu"]
    threads = sorted(run["threads"].items(), key=lambda kv: -kv[1])
    print(
        f"    CPU during (a): process {cpu:.2f} s ({cpu / secs:.0%} of one core); by thread: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in threads if v >= 0.01)
    )
    status = out.status if out is not None else "no file taken"
    print(
        f"    run status {res.status}, file {status}; decisions logged with caller "
        f"source:{SOURCE}: {logged:,} of {good:,} good rows "
        f"({'all' if logged == good else 'NOT all'}); quarantined {held:,} of {n_bad:,}; "
        f"sink rows {sink:,}; sqlite3 baselines "
        f"inserted {'/'.join(f'{c:,}' for c in sq['counts'])}"
    )
    ok = logged == good and held == n_bad and sink == good and sq["counts"] == (good,) * 3
    if sampler is not None:
        print()
        pres = prof["result"]
        print(
            f"(3) profile: the same file scored again (source {PROFILED}) under the stack "
            f"sampler, {prof['seconds']:.2f} s ({good / prof['seconds']:,.0f} rows/s with the "
            f"sampler on, status {pres.status})"
        )
        print_profile(sampler, good, a.top)
    if not ok:
        print("    warning: a count is off (decisions, quarantined rows, sink rows)")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows in the file (issue: 1000000)")
    ap.add_argument("--bad", type=float, default=0.0015, help="share of rows broken on purpose")
    ap.add_argument("--repeat", type=int, default=3, help="ingest runs (best of)")
    ap.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="the source's batch_rows (default: SourceSpec's)",
    )
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--no-profile", action="store_true", help="skip (3)")
    ap.add_argument("--profile-hz", type=float, default=200.0)
    ap.add_argument("--top", type=int, default=15, help="innermost frames listed in (3)")
    ap.add_argument("--skip-ingest", action="store_true", help="skip (1)")
    ap.add_argument("--skip-score", action="store_true", help="skip (2) and (3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args(argv)

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    work = Path(tempfile.mkdtemp(prefix="shipway-bench-ingest-"))
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    try:
        t0 = time.perf_counter()
        model, data = build_pilot(work, a.seed)
        manifest = init_shipway(work, model, data, target="label")
        spec = ContractSpec.model_validate(yaml.safe_load(manifest.read_text())["contract"])
        print(
            f"pilot: {model.name} (ColumnTransformer + LogisticRegression, 20 fields) registered "
            f"by shipway init in {time.perf_counter() - t0:.1f} s; the contract is the one "
            "init inferred from data.csv (ranges widened by 10%, categories as seen)"
        )
        t0 = time.perf_counter()
        table, n_bad, how = build(a.rows, a.bad, a.seed, spec)
        path = work / "day.parquet"
        pq.write_table(table, path)
        del table
        print(
            f"file: {a.rows:,} rows x 20 columns ({N_FLOAT} float, {N_INT} int, "
            f"{len(CATEGORIES)} category), {path.stat().st_size / 1e6:.1f} MB Parquet; "
            f"{n_bad:,} rows broken on purpose ("
            + ", ".join(f"{k} {v:,}" for k, v in how.items())
            + f"); built in {time.perf_counter() - t0:.1f} s; Arrow and BLAS on one thread"
        )
        print()
        ok = True
        if not a.skip_ingest:
            ok &= part_ingest(path, spec, work, a.rows, n_bad, a.repeat)
        if not a.skip_score:
            ok &= part_score(path, spec, manifest, a, n_bad)
        print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if a.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

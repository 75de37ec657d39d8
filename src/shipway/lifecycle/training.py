"""Retraining: a candidate fitted on recent labelled decisions, gated against the champion on
the most recent part of the window, then promoted as ``training.promote`` says.

The window is the answered decisions of the last ``training.last`` that have a label
(feedback, review outcomes, labels sources), with their inputs exactly as they were served
(no training/serving skew), plus the rows of the ``training.datasets`` train sources. It is
ordered by time; the most recent ``training.holdout`` share is the holdout, never trained on,
on which the candidate and the champion are both scored. The default fit is a clone of the
champion's scikit-learn estimator (same pipeline and hyper-parameters) refitted on the rest.

A run is a job (``training_jobs``, owned here): it runs in a process of its own
(``python -m shipway.lifecycle.train_job``), so serving is not slowed by the fit, and it has a
record: status, progress, log, rows and labels, the candidate, its gate result and its
lineage. ``running`` is unique per service, so retrains never overlap on any replica. A job
whose process is gone (killed) is marked failed with the reason; the champion is never touched
by a job that did not finish.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, desc, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipway.concurrency import OWNER, local_owner_alive
from shipway.data import datasets as data_sets
from shipway.decisions import labels
from shipway.decisions.ids import new_id
from shipway.errors import Conflict, InputError, ModelError, NotFound, ShipwayError
from shipway.lifecycle.evaluate import LOWER_IS_BETTER, GateResult, evaluate, gate
from shipway.lifecycle.rollout import Rollout
from shipway.manifest import Manifest, TrainingSpec
from shipway.models import ModelVersion, Registry
from shipway.models.predictor import import_callable, load_sklearn_bytes, probe
from shipway.models.registry import model_params
from shipway.notify.outbox import enqueue_all
from shipway.store.tables import training_jobs

TARGET, TS, ORIGIN = "__target__", "__ts__", "__from__"
#: Slices with fewer holdout rows than this are noted, not compared.
MIN_SLICE_ROWS = 10


# -- the window --------------------------------------------------------------------------------


@dataclass
class Window:
    """What a retrain learns from and is judged on."""

    records: list[dict[str, Any]]
    """Every row, oldest first: the contract's inputs, ``__target__``, ``__ts__``, ``__from__``."""
    split: int
    """Rows before this index train; the rest are the holdout."""
    labels: int
    dataset_rows: int
    datasets: list[dict[str, Any]] = field(default_factory=list)
    since: float | None = None

    @property
    def train(self) -> list[dict[str, Any]]:
        return self.records[: self.split]

    @property
    def holdout(self) -> list[dict[str, Any]]:
        return self.records[self.split :]

    def digest(self) -> str:
        """sha256 of the rows as learned from (the candidate's data lineage)."""
        h = hashlib.sha256()
        for r in self.records:
            h.update(orjson.dumps(r, option=orjson.OPT_SORT_KEYS, default=str))
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        ts = [r[TS] for r in self.records]
        return {
            "rows": len(self.records),
            "train_rows": self.split,
            "holdout_rows": len(self.records) - self.split,
            "labelled_decisions": self.labels,
            "dataset_rows": self.dataset_rows,
            "pilot_rows": sum(1 for r in self.records if r[ORIGIN] == "pilot"),
            "datasets": self.datasets,
            "since": self.since,
            "first": min(ts) if ts else None,
            "last": max(ts) if ts else None,
            "holdout_from": self.records[self.split][TS]
            if self.split < len(self.records)
            else None,
        }


def pilot_rows(parts: Any) -> list[dict[str, Any]]:
    """The pilot's data (kept with the first version as its reference data), as window rows
    older than any decision."""
    import io

    import pyarrow.parquet as pq

    first = parts.registry.get(parts.name, 1)
    if not first.reference_sha256:
        raise InputError("training.include_pilot_data: version 1 has no reference data kept")
    table = pq.read_table(io.BytesIO(parts.store.artifacts.read_verified(first.reference_sha256)))
    names = [f.name for f in parts.manifest.contract.inputs if f.name in table.column_names]
    cols = {n: table.column(n).to_pylist() for n in [*names, "__target__"]}
    return [
        {**{n: cols[n][i] for n in names}, TARGET: cols["__target__"][i], TS: first.created_at,
         ORIGIN: "pilot"}
        for i in range(table.num_rows)
    ]  # fmt: skip


def build_window(
    engine: Engine,
    manifest: Manifest,
    spec: TrainingSpec,
    now: float,
    pilot: list[dict[str, Any]] | None = None,
) -> Window:
    """The window ``spec`` describes, split by time; InputError (nothing trained) when it is
    too small or holds one class only. ``pilot``: the pilot's rows, when asked for."""
    service = manifest.service.name
    names = [f.name for f in manifest.contract.inputs]
    since = now - spec.last.seconds if spec.last is not None else None
    found = labels.labelled(engine, service, since or 0.0, spec.max_rows)
    records = [
        {**{n: r["inputs"].get(n) for n in names}, TARGET: r["label"], TS: r["ts"],
         ORIGIN: f"decision:{r['id']}"}
        for r in found
    ]  # fmt: skip
    used: list[dict[str, Any]] = []
    dataset_rows = 0
    sources = {s.name: s for s in manifest.sources}
    for name in spec.datasets:
        label = sources[name].label
        for v in data_sets.versions(engine, service, name):
            table = data_sets.read(v)
            if label is None or label not in table.column_names:
                raise InputError(
                    f"dataset {name} v{v['version']} has no label column (set label: on the "
                    f"train source {name}, and keep it in its files)"
                )
            for row in table.to_pylist():
                origin = f"dataset:{name}:{v['version']}"
                records.append({**{n: row.get(n) for n in names}, TARGET: row[label],
                                TS: v["created_at"], ORIGIN: origin})  # fmt: skip
                dataset_rows += 1
            used.append({"source": name, "version": v["version"], "sha256": v["sha256"]})
    if pilot:
        records.extend(pilot)
    records.sort(key=lambda r: r[TS])
    n = len(records)
    if n < spec.min_labels:
        raise InputError(
            f"the window holds {n} labelled rows ({len(found)} labelled decisions since "
            f"{_when(since)}, {dataset_rows} dataset rows); training.min_labels is "
            f"{spec.min_labels}: nothing was trained"
        )
    split = n - max(1, math.ceil(n * spec.holdout))
    window = Window(records, split, len(found), dataset_rows, used, since)
    if manifest.output.kind == "classification":
        seen = {str(r[TARGET]) for r in window.train}
        if len(seen) < 2:
            raise InputError(
                f"the training part of the window holds one class only ({sorted(seen)}): a "
                "classifier cannot be fitted; widen training.last or wait for more labels"
            )
    return window


def _when(ts: float | None) -> str:
    if not ts:
        return "the start"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


# -- jobs: the record (the one owner of training_jobs) -------------------------------------------


def _alive(owner: str | None) -> bool:
    if not owner:
        return True  # not started yet: its launcher is responsible for it
    alive = local_owner_alive(owner)
    return True if alive is None else alive  # another host: its launcher marks it


def start_job(engine: Engine, service: str, trigger: str, actor: str) -> str:
    """A new job, running; Conflict naming the running one if a retrain is under way."""
    for _ in range(2):
        job_id = new_id()
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(training_jobs).values(
                        id=job_id, service=service, trigger=trigger, actor=actor,
                        status="running", running="yes", started_at=time.time(), log="",
                    )
                )  # fmt: skip
            return job_id
        except IntegrityError:
            other = running_job(engine, service)
            if other is None:
                continue
            if not _alive(other["owner"]):
                finish(engine, other["id"], "failed",
                       error="the process running it is gone (killed or crashed); the "
                       "champion was not touched")  # fmt: skip
                continue
            raise Conflict(
                f"a retrain of {service} is under way: job {other['id']} ({other['trigger']}, "
                f"started {_when(other['started_at'])}); runs never overlap"
            ) from None
    raise Conflict(f"could not start a retrain of {service}; try again")


def running_job(engine: Engine, service: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(training_jobs).where(
                    training_jobs.c.service == service, training_jobs.c.running.is_not(None)
                )
            )
            .mappings()
            .first()
        )
    return _decode(row) if row is not None else None


def _decode(row: Any) -> dict[str, Any]:
    d = {str(k): v for k, v in row.items()}
    for k in ("gate", "lineage"):
        d[k] = orjson.loads(d[k]) if d[k] else None
    return d


def note(engine: Engine, job_id: str, line: str, **fields: Any) -> None:
    """Append a line to the job's log (and set ``progress`` and other fields)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    with engine.begin() as conn:
        log = (
            conn.execute(select(training_jobs.c.log).where(training_jobs.c.id == job_id)).scalar()
            or ""
        )
        values = {"log": f"{log}{stamp} {line}\n", "progress": line, **fields}
        conn.execute(update(training_jobs).where(training_jobs.c.id == job_id).values(**values))


def finish(
    engine: Engine, job_id: str, status: str, hooks: Sequence[Any] = (), **fields: Any
) -> None:
    """End a running job. A job that did not pass (refused, failed) is also a notification to
    ``hooks`` (the monitor's webhooks), queued in the same transaction."""
    for k in ("gate", "lineage"):
        if k in fields and fields[k] is not None:
            fields[k] = orjson.dumps(fields[k], default=str).decode()
    with engine.begin() as conn:
        res = conn.execute(
            update(training_jobs)
            .where(training_jobs.c.id == job_id, training_jobs.c.running.is_not(None))
            .values(status=status, running=None, finished_at=time.time(), **fields)
        )
        if res.rowcount and status != "ok" and hooks:
            job = conn.execute(
                select(
                    training_jobs.c.service, training_jobs.c.trigger, training_jobs.c.candidate
                ).where(training_jobs.c.id == job_id)
            ).one()
            payload = {
                "service": job.service,
                "job": job_id,
                "status": status,
                "trigger": job.trigger,
                "candidate": job.candidate,
                "why": fields.get("error"),
            }
            enqueue_all(conn, job.service, "retrain", list(hooks), payload)


def get_job(engine: Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = (
            conn.execute(select(training_jobs).where(training_jobs.c.id == job_id))
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"no retrain job {job_id}")
    return _decode(row)


def list_jobs(engine: Engine, service: str, limit: int = 20) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(training_jobs)
                .where(training_jobs.c.service == service)
                .order_by(desc(training_jobs.c.started_at))
                .limit(limit)
            )
            .mappings()
            .all()
        )
    return [_decode(r) for r in rows]


# -- running a job ---------------------------------------------------------------------------------


def launch(manifest_path: Path, job_id: str) -> subprocess.Popen[bytes]:
    """The job's own process. What it prints goes to a temporary file, not a pipe (a training
    function that prints a lot must never block on a pipe nobody reads); the last line of it
    names the cause when the process dies. The job's own account is its log in the store."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the child; closed by wait()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipway.lifecycle.train_job", job_id, str(manifest_path)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    proc.shipway_output = out  # type: ignore[attr-defined]
    return proc


def wait(
    engine: Engine,
    job_id: str,
    proc: subprocess.Popen[bytes],
    on_progress: Any = None,
    hooks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Wait for the job's process; a process that ended without finishing its job (killed,
    crashed) leaves the job failed with the reason."""
    last = None
    while proc.poll() is None:
        time.sleep(0.2)
        if on_progress is not None:
            job = get_job(engine, job_id)
            if job["progress"] != last:
                last = job["progress"]
                on_progress(last)
    err = ""
    out = getattr(proc, "shipway_output", None)
    if out is not None:
        out.seek(0, os.SEEK_END)
        out.seek(max(0, out.tell() - 4096))  # the end says why a process died
        err = out.read().decode(errors="replace")
        out.close()
    job = get_job(engine, job_id)
    if job["running"] is not None:
        code = proc.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        tail = err.strip().splitlines()[-1] if err.strip() else ""
        finish(engine, job_id, "failed", hooks,
               error=f"the job's process {how} before it finished"
               + (f": {tail}" if tail else "") + "; the champion was not touched")  # fmt: skip
        job = get_job(engine, job_id)
    return job


@dataclass
class Outcome:
    status: str
    candidate: int | None
    gate: dict[str, Any] | None
    promoted: str


def run_job(parts: Any, job_id: str) -> Outcome:
    """The job, start to end, in the process that runs it (``train_job``): the window, the
    fit, the candidate registered with its parent and lineage, the gate on the time holdout
    (and every declared slice), and the promotion ``training.promote`` asks for."""
    engine = parts.store.engine
    m: Manifest = parts.manifest
    spec = m.training
    if spec is None:
        raise InputError("the manifest has no training section: nothing to retrain")
    with engine.begin() as conn:
        conn.execute(update(training_jobs).where(training_jobs.c.id == job_id).values(owner=OWNER))
    actor = f"system:retrain-{job_id}"
    note(engine, job_id, "reading the window")
    pilot = pilot_rows(parts) if spec.include_pilot_data else None
    window = build_window(engine, m, spec, time.time(), pilot)
    info = window.summary()
    line = (
        f"window: {info['rows']} rows ({info['labelled_decisions']} labelled decisions, "
        f"{info['dataset_rows']} dataset rows); {info['train_rows']} to train, "
        f"{info['holdout_rows']} to judge"
    )
    note(engine, job_id, line, rows=info["rows"], labels=info["labelled_decisions"])
    registry: Registry = parts.registry
    champion_no = parts.champion_version()
    champion = registry.get(m.service.name, champion_no)
    note(engine, job_id, f"fitting ({spec.fit}) on {window.split} rows")
    with tempfile.TemporaryDirectory(prefix="shipway-retrain-") as scratch:
        path, estimator, fit_s = _fit(registry, m, spec, champion, window, Path(scratch))
        note(engine, job_id, f"fitted in {fit_s:.1f} s; registering the candidate")
        flavor, uri, digest, obj = registry.stage(str(path), Path(scratch))
    names = [f.name for f in m.contract.inputs]
    rows = [tuple(r.get(n) for n in names) for r in window.holdout]
    y = [r[TARGET] for r in window.holdout]
    out_labels = list(m.output.labels or [])
    temp = ModelVersion(
        service=m.service.name, version=0, uri=uri, flavor=flavor, artifact_sha256=digest,
        source=f"retrain:{job_id}", contract_sha256=m.contract.digest(), data_sha256=None,
        reference_sha256=champion.reference_sha256, params={}, metrics={}, reference={},
        note="", created_by=actor, created_at=time.time(),
    )  # fmt: skip
    try:
        cand_pred = registry.load(temp, m.contract, out_labels)
    except ModelError as exc:
        raise ModelError(f"the fitted candidate cannot be served: {exc.message}") from None
    probe(cand_pred, rows[:64])
    champ_pred = registry.load(champion, m.contract, out_labels)
    probe(champ_pred, rows[:64])
    metrics = evaluate(cand_pred, m.output, rows, y)
    champion_metrics = evaluate(champ_pred, m.output, rows, y)
    result = gate(m, metrics, champion_metrics)
    _slices(m, window, cand_pred, champ_pred, result)
    lineage = {
        "job": job_id,
        "parent": champion_no,
        "fit": spec.fit,
        "estimator_sha256": estimator,
        "seed": spec.seed,
        "window": info,
        "window_sha256": window.digest(),
        "datasets": window.datasets,
        "packages": _packages(),
        "fit_seconds": round(fit_s, 3),
    }
    mv = registry.add(
        m.service.name, uri=uri, flavor=flavor, contract=m.contract, artifact_sha256=digest,
        source=f"retrain:{job_id}", data_sha256=window.digest(),
        reference_sha256=champion.reference_sha256,
        params=model_params(obj) if obj is not None else {},
        metrics={
            "holdout": metrics,
            "holdout_kind": "time",
            "champion": {"version": champion_no, "holdout": champion_metrics},
            "gate": result.to_dict(),
            "retrain": lineage,
        },
        reference=champion.reference,
        note=f"retrained from v{champion_no} by job {job_id}",
        actor=actor,
    )  # fmt: skip
    verdict = "passed" if result.passed else "failed: " + "; ".join(result.reasons)
    note(engine, job_id, f"candidate v{mv.version}: gate {verdict}", candidate=mv.version)
    promoted = "not promoted (gate failed; the champion stays)"
    if result.passed:
        promoted = _promote(parts, spec, mv.version, actor, job_id)
        note(engine, job_id, promoted)
    status = "ok" if result.passed else "refused"
    finish(engine, job_id, status, m.monitor.webhooks, gate=result.to_dict(), lineage=lineage,
           candidate=mv.version, error=None if result.passed else verdict)  # fmt: skip
    return Outcome(status, mv.version, result.to_dict(), promoted)


def _fit(
    registry: Registry,
    m: Manifest,
    spec: TrainingSpec,
    champion: ModelVersion,
    window: Window,
    scratch: Path,
) -> tuple[Path, str, float]:
    """Fit the candidate; its file (joblib), the estimator's hash (lineage) and the seconds
    the fit itself took."""
    import joblib
    import pandas as pd

    frame = pd.DataFrame.from_records(window.train)
    path = scratch / "candidate.joblib"
    if spec.fit == "clone":
        if champion.flavor != "sklearn":
            raise InputError(
                f"training.fit: clone refits the champion's scikit-learn estimator, and v"
                f"{champion.version} is {champion.flavor}; give training.fit a "
                "python:module:function that fits one"
            )
        from sklearn.base import clone

        est = load_sklearn_bytes(
            registry.store.artifacts.read_verified(champion.artifact_sha256 or "")
        )
        model = clone(est)
        seeded = {k: spec.seed for k in model.get_params() if k.endswith("random_state")}
        if seeded:
            model.set_params(**seeded)
        fitted_on = getattr(est, "feature_names_in_", None)
        features = (
            [str(c) for c in fitted_on]
            if fitted_on is not None
            else [f.name for f in m.contract.inputs if f.role == "feature"]
        )
        x = frame[features]
        if fitted_on is None:
            x = x.to_numpy()
        weights = _weights(frame, spec)
        t0 = time.perf_counter()
        if weights is None:
            model.fit(x, frame[TARGET])
        else:
            steps = getattr(model, "steps", None)
            key = f"{steps[-1][0]}__sample_weight" if steps else "sample_weight"
            try:
                model.fit(x, frame[TARGET], **{key: weights})
            except TypeError as exc:
                raise InputError(
                    f"training.recency_half_life weights rows, and the estimator does not take "
                    f"sample_weight ({exc}); remove it or fit with a training function"
                ) from None
        estimator = hashlib.sha256(repr(est.get_params(deep=True)).encode()).hexdigest()
    else:
        fn = import_callable(spec.fit)
        weights = _weights(frame, spec)
        if weights is not None:
            frame["__weight__"] = weights
        t0 = time.perf_counter()
        try:
            model = fn(frame.drop(columns=[TS, ORIGIN]), m.contract)
        except Exception as exc:
            raise ModelError(f"{spec.fit} raised {type(exc).__name__}: {exc}") from None
        estimator = hashlib.sha256(spec.fit.encode()).hexdigest()
        if isinstance(model, str | Path):
            return Path(model), estimator, time.perf_counter() - t0
        if model is None or not hasattr(model, "predict"):
            raise ModelError(
                f"{spec.fit} returned {type(model).__name__}, not a fitted model (an object "
                "with predict, or the path of a model file)"
            )
    fit_s = time.perf_counter() - t0  # the estimator's fit (or the function) alone
    joblib.dump(model, path)
    return path, estimator, fit_s


def _weights(frame: Any, spec: TrainingSpec) -> Any:
    """Each row's weight by age (halved every ``recency_half_life``), or None."""
    if spec.recency_half_life is None:
        return None
    import numpy as np

    age = frame[TS].max() - frame[TS].to_numpy(dtype=float)
    return np.power(0.5, age / spec.recency_half_life.seconds)


def _slices(m: Manifest, window: Window, cand: Any, champ: Any, result: GateResult) -> None:
    """Each declared slice of the holdout: the candidate may trail the champion there by at
    most ``not_worse_than_champion_by`` on every gate metric."""
    from shipway.expr import Expression

    if not m.quality.slices:
        return
    names = [f.name for f in m.contract.inputs]
    margin = m.quality.not_worse_than_champion_by or 0.0
    for sl in m.quality.slices:
        expr = Expression(sl.when)
        part = [r for r in window.holdout if expr({"inputs": r})]
        if len(part) < MIN_SLICE_ROWS:
            result.notes.append(
                f"slice {sl.name}: {len(part)} holdout rows, fewer than {MIN_SLICE_ROWS}; "
                "not compared"
            )
            continue
        rows = [tuple(r.get(n) for n in names) for r in part]
        y = [r[TARGET] for r in part]
        mine, theirs = evaluate(cand, m.output, rows, y), evaluate(champ, m.output, rows, y)
        for name in list(m.quality.metrics) or [k for k in theirs if k in mine][:1]:
            if name not in mine or name not in theirs:
                continue
            a, b = mine[name], theirs[name]
            ok = a <= b + margin if name in LOWER_IS_BETTER else a >= b - margin
            text = f"slice {sl.name} ({len(part)} rows): {name} {a:.4f} vs champion {b:.4f}"
            (result.checks if ok else result.reasons).append(text)
            if not ok:
                result.passed = False


def _promote(parts: Any, spec: TrainingSpec, version: int, actor: str, job_id: str) -> str:
    if spec.promote == "manual":
        return f"v{version} registered; promote it with shipway rollout (training.promote: manual)"
    rollout: Rollout = parts.rollout
    reason = f"retrained by job {job_id}; gate passed"
    try:
        if spec.promote == "shadow":
            rollout.shadow(version, actor=actor, reason=reason)
            return f"v{version} shadows the champion"
        rollout.canary(version, actor=actor, reason=reason)
        return f"v{version} takes canary traffic ({rollout.state().canary_percent:g}%)"
    except ShipwayError as exc:
        return f"v{version} registered, not promoted: {exc.message}"


def _packages() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("shipway", "scikit-learn", "numpy", "pandas", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


__all__ = [
    "Outcome",
    "Window",
    "build_window",
    "finish",
    "get_job",
    "launch",
    "list_jobs",
    "note",
    "pilot_rows",
    "run_job",
    "running_job",
    "start_job",
    "wait",
]

"""The scheduler: every periodic task of a running service, each on its own clock.

A :class:`Task` is a name, an interval (or a cron expression, in UTC) and a function. A task
may retry a failed run sooner than its next time, with a delay that doubles on each failure
in a row (capped at the interval). Each task runs on a thread of its own,
so a slow task (a monitor window over a large log, a webhook that never answers) never delays
another (the rollout poll that must reach every replica within a second). Each task has its own
error handling (a failure is logged and counted, and the task runs again at its next interval)
and its own metrics: runs by result, duration, time of the last success.

Some work must happen once across replicas (the monitor's window, the retention purge). Such a
task is ``once``: before it runs, a replica takes a PostgreSQL advisory lock keyed by store
(database and schema), service and task (skipping if another replica holds it), then inserts
a ``job_runs`` row for the task's time slot, which a unique constraint lets only one replica
write. Either guard alone would do most of the time; the lock keeps two runs from
overlapping, the row keeps a slot from running twice when one replica's clock is late or the
lock's session was lost. On SQLite (one host) the row alone decides. Work that is safe on
every replica at once (polls, the outbox, whose messages are leased one by one) runs
everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, insert, text, update
from sqlalchemy.exc import IntegrityError

from shipway.store.tables import job_runs

log = logging.getLogger("shipway.jobs")

#: How long ``job_runs`` rows are kept.
KEEP_RUNS_S = 7 * 86400.0


@dataclass
class Task:
    """Periodic work: ``run()`` every ``every_s`` seconds (first after ``first_s``), or at the
    times of ``cron`` (UTC; ``every_s`` then caps the retry delay). With ``retry_s``, a failed
    run is tried again after ``retry_s``, doubling with each failure in a row."""

    name: str
    every_s: float
    run: Callable[[], Any]
    once: bool = False
    first_s: float | None = None
    cron: str | None = None
    retry_s: float | None = None


def cron_times(expr: str, now: float) -> tuple[float, float]:
    """The latest time at or before ``now`` and the next time after it that ``expr`` (a cron
    expression, in UTC) names."""
    import datetime as dt

    from croniter import croniter

    at = dt.datetime.fromtimestamp(now, dt.UTC)
    prev = croniter(expr, at).get_prev(float)
    nxt = croniter(expr, at).get_next(float)
    return float(prev), float(nxt)


@dataclass
class _State:
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    running: bool = False
    streak: int = 0  # failures in a row
    last_ok: float | None = None
    last_error: str | None = None
    last_seconds: float | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        service: str,
        *,
        metrics: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.service = service
        self.metrics = metrics
        self._clock = clock
        self._tasks: dict[str, Task] = {}
        self._state: dict[str, _State] = {}
        self._stop = threading.Event()
        self._locks: dict[str, threading.Lock] = {}
        self.runner = f"{socket.gethostname()}:{os.getpid()}"

    def add(self, task: Task) -> None:
        if task.name in self._tasks:
            raise ValueError(f"a task named {task.name!r} is already scheduled")
        self._tasks[task.name] = task
        self._state[task.name] = _State()
        self._locks[task.name] = threading.Lock()

    # -- running -----------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for name, task in self._tasks.items():
            t = threading.Thread(
                target=self._loop, args=(task,), name=f"shipway-job-{name}", daemon=True
            )
            self._state[name].thread = t
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every task's thread; a task in the middle of a run finishes it first."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for st in self._state.values():
            if st.thread is not None:
                st.thread.join(max(0.0, deadline - time.monotonic()))
                st.thread = None

    def _loop(self, task: Task) -> None:
        if task.cron is not None:
            delay = cron_times(task.cron, self._clock())[1] - self._clock()
        else:
            delay = task.every_s if task.first_s is None else task.first_s
        st = self._state[task.name]
        while not self._stop.wait(max(0.0, delay)):
            t0 = time.monotonic()
            self.run_now(task.name)
            delay = self.next_delay(task) - (time.monotonic() - t0)
            if task.cron is not None:
                delay = max(delay, 0.001)
            if task.retry_s and st.streak:
                retry = task.retry_s * 2 ** (st.streak - 1) - (time.monotonic() - t0)
                delay = min(delay, retry)

    def next_delay(self, task: Task) -> float:
        """Seconds from now to the task's next regular run."""
        if task.cron is not None:
            now = self._clock()
            return cron_times(task.cron, now)[1] - now
        return task.every_s

    def run_now(self, name: str) -> bool:
        """Run one task now, with its guards (True when it ran; False when skipped)."""
        task = self._tasks[name]
        with self._locks[name]:  # never two runs of one task in one process
            if task.once:
                return self._run_once(task)
            self._execute(task)
            return True

    def _execute(self, task: Task) -> bool:
        st = self._state[task.name]
        st.running = True
        t0 = time.perf_counter()
        ok = True
        try:
            task.run()
            st.last_ok = self._clock()
            st.last_error = None
            st.streak = 0
        except Exception as exc:
            ok = False
            st.failures += 1
            st.streak += 1
            st.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.exception(
                "scheduled task %s failed; it runs again in %.3g s", task.name, task.every_s
            )
        finally:
            st.running = False
            st.runs += 1
            st.last_seconds = time.perf_counter() - t0
            self._observe(task.name, "ok" if ok else "failed", st.last_seconds, st.last_ok)
        return ok

    def _run_once(self, task: Task) -> bool:
        """Run ``task`` unless another replica runs (or ran) its current slot."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as lock_conn:
                # advisory locks are cluster-wide: scope the key to this store (database and
                # schema), so two stores on one server never keep each other's tasks out
                scope = lock_conn.execute(
                    text("SELECT current_database() || '/' || current_schema()")
                ).scalar()
                name = f"{scope}/{self.service}/{task.name}"
                key = (zlib.crc32(name.encode()) & 0x7FFFFFFF) | (1 << 32)
                got = lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
                if not got.scalar():
                    return self._skipped(task.name)
                try:
                    return self._claim_and_run(task)
                finally:
                    lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    lock_conn.commit()
        return self._claim_and_run(task)

    def _claim_and_run(self, task: Task) -> bool:
        now = self._clock()
        if task.cron is not None:
            base = int(cron_times(task.cron, now)[0])
        else:
            base = int(now // task.every_s) if task.every_s > 0 else int(now * 1000)
        # a retry after a failure is a slot of its own (attempt 1, 2, ...): the failed run's
        # row keeps the slot, and replicas still agree on which attempt runs
        slot = base * 64 + min(self._state[task.name].streak, 63)
        try:
            with self.engine.begin() as conn:
                res = conn.execute(
                    insert(job_runs).values(
                        service=self.service,
                        task=task.name,
                        slot=slot,
                        started_at=now,
                        status="running",
                        runner=self.runner,
                    )
                )
                run_id = res.inserted_primary_key[0] if res.inserted_primary_key else None
        except IntegrityError:
            return self._skipped(task.name)
        ok = self._execute(task)
        st = self._state[task.name]
        with self.engine.begin() as conn:
            conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(
                    status="ok" if ok else "failed",
                    finished_at=self._clock(),
                    error=None if ok else st.last_error,
                )
            )
            conn.execute(
                delete(job_runs).where(
                    job_runs.c.service == self.service,
                    job_runs.c.task == task.name,
                    job_runs.c.started_at < now - KEEP_RUNS_S,
                )
            )
        return True

    def _skipped(self, name: str) -> bool:
        self._state[name].skipped += 1
        if self.metrics is not None:
            self.metrics.job_runs.labels(name, "skipped").inc()
        return False

    def _observe(self, name: str, result: str, seconds: float, last_ok: float | None) -> None:
        m = self.metrics
        if m is None:
            return
        m.job_runs.labels(name, result).inc()
        m.job_seconds.labels(name).observe(seconds)
        if last_ok is not None:
            m.job_last_ok.labels(name).set(last_ok)

    def status(self) -> list[dict[str, Any]]:
        """Every task: interval, runs, failures, skips, last success and last error."""
        return [
            {
                "task": name,
                "every_s": t.every_s,
                "cron": t.cron,
                "once": t.once,
                "runs": self._state[name].runs,
                "failures": self._state[name].failures,
                "skipped": self._state[name].skipped,
                "running": self._state[name].running,
                "last_ok": self._state[name].last_ok,
                "last_error": self._state[name].last_error,
                "last_seconds": self._state[name].last_seconds,
            }
            for name, t in self._tasks.items()
        ]


__all__ = ["KEEP_RUNS_S", "Scheduler", "Task"]

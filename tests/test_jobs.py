"""The scheduler and the outbox against real stores (SQLite and PostgreSQL) and a real HTTP
target: each task on its own clock, once across replicas, failures counted and survived;
notifications retried with backoff, refused ones failed at once, every attempt recorded."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shipway.jobs import Scheduler, Task
from shipway.manifest import WebhookSpec
from shipway.metrics import ServiceMetrics
from shipway.notify import Outbox
from shipway.notify.outbox import enqueue
from shipway.store import Store, open_store


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(database_url, tmp_path / "artifacts")
    yield s
    s.close()


def test_a_slow_task_never_delays_another(store: Store) -> None:
    ticks: list[float] = []
    sched = Scheduler(store.engine, "svc")
    sched.add(Task("slow", 0.05, lambda: time.sleep(3.0)))
    sched.add(Task("fast", 0.05, lambda: ticks.append(time.monotonic())))
    sched.start()
    try:
        time.sleep(1.0)
    finally:
        sched.stop(timeout=5)
    assert len(ticks) >= 8  # every 50 ms while the slow task sleeps its 3 s


def test_a_failing_task_is_counted_and_runs_again(store: Store) -> None:
    calls: list[int] = []
    metrics = ServiceMetrics("svc")

    def flaky() -> None:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("upstream down")

    sched = Scheduler(store.engine, "svc", metrics=metrics)
    sched.add(Task("flaky", 0.02, flaky))
    for _ in range(4):
        sched.run_now("flaky")
    st = sched.status()[0]
    assert (st["runs"], st["failures"]) == (4, 2)
    assert st["last_error"] is None and st["last_ok"] is not None  # the 4th run succeeded
    text = metrics.exposition().decode()
    assert 'shipway_job_runs_total{result="failed",task="flaky"} 2.0' in text
    assert 'shipway_job_runs_total{result="ok",task="flaky"} 2.0' in text


def test_a_once_task_runs_once_per_slot_across_replicas(store: Store) -> None:
    runs: list[str] = []
    now = [1_000_000.0]
    replicas = []
    for name in ("a", "b", "c"):
        s = Scheduler(store.engine, "svc", clock=lambda: now[0])
        s.add(Task("monitor", 60.0, lambda n=name: runs.append(n), once=True))
        replicas.append(s)
    ran = [s.run_now("monitor") for s in replicas]
    assert ran.count(True) == 1 and len(runs) == 1
    assert [s.status()[0]["skipped"] for s in replicas].count(1) == 2
    now[0] += 60.0  # the next slot: one replica again
    ran = [s.run_now("monitor") for s in replicas]
    assert ran.count(True) == 1 and len(runs) == 2


@pytest.mark.postgres
def test_a_once_task_is_not_run_twice_at_the_same_time(tmp_path: Path) -> None:
    """A run that outlasts its interval keeps other replicas out (PostgreSQL's advisory lock;
    on SQLite the slot row alone decides, so a run longer than its interval may overlap one
    started on another process for the next slot)."""
    from tests.conftest import PG_ENV, pg_schema_url

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL configured ({PG_ENV} is unset)")
    with pg_schema_url(base) as url:
        store = open_store(url, tmp_path / "artifacts")
        try:
            _no_overlap(store)
        finally:
            store.close()


@pytest.mark.postgres
def test_stores_on_one_server_do_not_keep_each_other_out(tmp_path: Path) -> None:
    """Advisory locks are server-wide: two stores (schemas) with a service of the same name
    each run their once task, even while the other's is running."""
    from tests.conftest import PG_ENV, pg_schema_url

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL configured ({PG_ENV} is unset)")
    started, release = threading.Event(), threading.Event()
    other: list[int] = []

    def long_run() -> None:
        started.set()
        release.wait(10)

    with pg_schema_url(base) as url_a, pg_schema_url(base) as url_b:
        store_a = open_store(url_a, tmp_path / "a")
        store_b = open_store(url_b, tmp_path / "b")
        a = Scheduler(store_a.engine, "svc")
        a.add(Task("monitor", 60.0, long_run, once=True))
        b = Scheduler(store_b.engine, "svc")
        b.add(Task("monitor", 60.0, lambda: other.append(1), once=True))
        t = threading.Thread(target=a.run_now, args=("monitor",))
        t.start()
        try:
            assert started.wait(5)
            assert b.run_now("monitor") is True and other == [1]
        finally:
            release.set()
            t.join(10)
            store_a.close()
            store_b.close()


def _no_overlap(store: Store) -> None:
    started = threading.Event()
    release = threading.Event()
    runs: list[int] = []

    def long_run() -> None:
        runs.append(1)
        started.set()
        release.wait(10)

    now = [2_000_000.0]
    a = Scheduler(store.engine, "svc", clock=lambda: now[0])
    b = Scheduler(store.engine, "svc", clock=lambda: now[0] + 1.0)
    for s in (a, b):
        s.add(Task("retention", 1.0, long_run, once=True))
    t = threading.Thread(target=a.run_now, args=("retention",))
    t.start()
    assert started.wait(10)
    assert b.run_now("retention") is False  # b's slot is new, but a still holds the task
    release.set()
    t.join(10)
    assert len(runs) == 1


class Target:
    """A webhook target that answers each request with the next status of a script."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[bytes] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                code = outer.statuses.pop(0) if outer.statuses else 204
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_outbox_retries_with_backoff_and_records_every_attempt(store: Store) -> None:
    target = Target([503, 429, 204])
    now = [100.0]
    box = Outbox(store.engine, "svc", clock=lambda: now[0], rng=lambda: 1.0)
    try:
        with store.engine.begin() as conn:
            mid = enqueue(
                conn, "svc", "alert", WebhookSpec(url=target.url), {"rule": "x"}, now=now[0]
            )
        assert box.deliver_due() == 1  # 503: retry in 1 s
        assert box.deliver_due() == 0  # not due yet
        now[0] += 1.0
        assert box.deliver_due() == 1  # 429: retry in 2 s
        now[0] += 1.5
        assert box.deliver_due() == 0
        now[0] += 0.5
        assert box.deliver_due() == 1  # delivered
        msg = box.messages(ids=[mid])[0]
        assert msg["status"] == "delivered" and msg["attempts"] == 3
        assert [a["outcome"] for a in msg["attempt_log"]] == ["HTTP 503", "HTTP 429", "HTTP 204"]
        assert len(target.bodies) == 3 and b'"rule":"x"' in target.bodies[0]
        assert box.backlog()[0] == 0
    finally:
        target.close()


def test_a_refused_notification_fails_at_once_and_others_still_go(store: Store) -> None:
    refusing, fine = Target([404]), Target([])
    box = Outbox(store.engine, "svc")
    try:
        with store.engine.begin() as conn:
            bad = enqueue(conn, "svc", "alert", WebhookSpec(url=refusing.url), {"n": 1})
            good = enqueue(conn, "svc", "alert", WebhookSpec(url=fine.url), {"n": 2})
            enqueue(conn, "other-service", "alert", WebhookSpec(url=fine.url), {"n": 3})
        assert box.deliver_due() == 2
        by_id = {m["id"]: m for m in box.messages()}
        assert by_id[bad]["status"] == "failed" and by_id[bad]["last_error"] == "HTTP 404"
        assert by_id[good]["status"] == "delivered"
        assert len(fine.bodies) == 1  # the other service's message is its own server's
    finally:
        refusing.close()
        fine.close()


def test_a_notification_rolled_back_with_its_change_is_never_sent(store: Store) -> None:
    target = Target([])
    box = Outbox(store.engine, "svc")
    try:
        with pytest.raises(RuntimeError), store.engine.begin() as conn:
            enqueue(conn, "svc", "alert", WebhookSpec(url=target.url), {"n": 1})
            raise RuntimeError("the change failed")
        assert box.deliver_due() == 0 and target.bodies == []
    finally:
        target.close()


def test_a_failed_run_is_retried_sooner_with_backoff(store: Store) -> None:
    """A task due every 30 s whose run fails is tried again after 0.1 s, then 0.2 s; once it
    succeeds it waits for its interval again. As a once task, each retry is a slot of its own."""
    calls: list[float] = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError("the database is not reachable")

    sched = Scheduler(store.engine, "svc")
    sched.add(Task("source:orders", 30.0, flaky, once=True, first_s=0.0, retry_s=0.1))
    sched.start()
    try:
        time.sleep(1.5)
    finally:
        sched.stop(timeout=5)
    assert len(calls) == 3  # failed, retried, retried and succeeded; the next run is in 30 s
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 0.08 <= gaps[0] < 0.5 and gaps[1] >= 0.18
    st = sched.status()[0]
    assert (st["failures"], st["last_error"]) == (2, None)


def test_a_cron_task_runs_once_per_scheduled_time_across_replicas(store: Store) -> None:
    from shipway.jobs.scheduler import cron_times

    at = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    assert cron_times("0 2 * * *", at) == (1_799_978_400.0, 1_800_064_800.0)  # 02:00 daily
    runs: list[str] = []
    now = [at + 30.0]
    replicas = []
    for name in ("a", "b"):
        s = Scheduler(store.engine, "svc", clock=lambda: now[0])
        s.add(Task("nightly", 3600.0, lambda n=name: runs.append(n), once=True, cron="0 * * * *"))
        replicas.append(s)
    assert [s.run_now("nightly") for s in replicas].count(True) == 1
    now[0] += 1800.0  # the same scheduled hour: nobody runs it again
    assert [s.run_now("nightly") for s in replicas].count(True) == 0
    now[0] += 1800.0  # the next hour
    assert [s.run_now("nightly") for s in replicas].count(True) == 1 and len(runs) == 2

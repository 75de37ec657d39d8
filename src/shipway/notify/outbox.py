"""The outbox: every outbound notification (alert webhooks, review SLA breaches, the answer of
a held decision) is a row written in the caller's own transaction and delivered later by one
background worker.

Why: a webhook target that is slow or dead must never stall the thing that raised the
notification (a reviewer's request, the rollout poll, the monitor). Writing a row is cheap and
commits with the change it reports, so a notification is never sent for a change that rolled
back, and never lost if the process dies between the change and the delivery: the next worker
to run, in this process or another, picks it up.

Delivery: a JSON POST per message, retried on connection errors, timeouts, 429 and 5xx with
jittered exponential backoff, at most ``attempts`` times; other 4xx answers fail at once. Every
attempt is a row of ``outbox_attempts``. Several replicas may run the worker: a message is
leased (a conditional UPDATE decides who holds it) before it is sent, so each attempt is made
once. Header values written as ``env:NAME`` are read from the environment at delivery, so
secrets are never stored.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from shipway.manifest import WebhookSpec
from shipway.store.tables import outbox, outbox_attempts

log = logging.getLogger("shipway.outbox")

#: Seconds before the first retry; doubled per attempt up to BACKOFF_MAX_S, with jitter.
BACKOFF_S = 1.0
BACKOFF_MAX_S = 300.0
#: Messages one worker pass takes at most, and how many it sends at once.
BATCH = 50
SENDERS = 4


def host_of(url: str) -> str:
    """The scheme and host of a URL, without path, query or credentials (safe to show)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def enqueue(
    conn: Connection,
    service: str,
    topic: str,
    hook: WebhookSpec,
    payload: dict[str, Any],
    *,
    now: float | None = None,
) -> int:
    """Queue one message in ``conn``'s transaction (due at once); returns its id."""
    now = time.time() if now is None else now
    res = conn.execute(
        insert(outbox).values(
            service=service,
            topic=topic,
            url=hook.url,
            headers=orjson.dumps(hook.headers).decode(),
            payload=orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS).decode(),
            created_at=now,
            status="pending",
            attempts=0,
            max_attempts=hook.attempts,
            timeout_s=hook.timeout_s,
            next_at=now,
        )
    )
    pk = res.inserted_primary_key
    return int(pk[0]) if pk else 0


def enqueue_all(
    conn: Connection,
    service: str,
    topic: str,
    hooks: Sequence[WebhookSpec],
    payload: dict[str, Any],
) -> list[int]:
    return [enqueue(conn, service, topic, h, payload) for h in hooks]


def backoff_s(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Wait before retry number ``attempt`` (1-based): 1, 2, 4, ... s, capped, times 0.5-1."""
    return min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)) * (0.5 + 0.5 * rng())


def _send(row: dict[str, Any]) -> tuple[bool, bool, str, float]:
    """POST one message: (delivered, retryable, outcome, seconds)."""
    headers = {"content-type": "application/json"}
    for k, v in orjson.loads(row["headers"]).items():
        headers[k] = os.environ.get(v[4:], "") if v.startswith("env:") else v
    t0 = time.perf_counter()
    try:
        r = httpx.post(
            row["url"], content=row["payload"].encode(), headers=headers, timeout=row["timeout_s"]
        )
    except httpx.HTTPError as exc:
        return False, True, type(exc).__name__, time.perf_counter() - t0
    took = time.perf_counter() - t0
    if r.status_code < 400:
        return True, False, f"HTTP {r.status_code}", took
    return False, r.status_code == 429 or r.status_code >= 500, f"HTTP {r.status_code}", took


class Outbox:
    """The delivery side: :meth:`deliver_due` is the scheduler's ``outbox`` task."""

    def __init__(
        self,
        engine: Engine,
        service: str,
        *,
        metrics: Any = None,
        send: Callable[[dict[str, Any]], tuple[bool, bool, str, float]] = _send,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.service = service
        self.metrics = metrics
        self._send = send
        self._clock = clock
        self._rng = rng
        self._pool: ThreadPoolExecutor | None = None

    def _claim(self, now: float) -> list[dict[str, Any]]:
        due = and_(
            outbox.c.service == self.service,
            outbox.c.status == "pending",
            outbox.c.next_at <= now,
            or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
        )
        out = []
        with self.engine.begin() as conn:
            rows = (
                conn.execute(
                    select(outbox).where(due).order_by(outbox.c.next_at, outbox.c.id).limit(BATCH)
                )
                .mappings()
                .all()
            )
            for r in rows:
                lease = now + r["timeout_s"] * 2 + 5
                res = conn.execute(
                    update(outbox).where(outbox.c.id == r["id"], due).values(lease_until=lease)
                )
                if res.rowcount == 1:
                    out.append(dict(r))
        return out

    def deliver_due(self) -> int:
        """Send every message that is due; returns how many attempts were made."""
        rows = self._claim(self._clock())
        if not rows:
            self._publish()
            return 0
        if len(rows) == 1:
            results = [self._send(rows[0])]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="shipway-outbox")
            results = list(self._pool.map(self._send, rows))
        with self.engine.begin() as conn:
            for row, (ok, retryable, outcome, took) in zip(rows, results, strict=True):
                self._settle(conn, row, ok, retryable, outcome, took)
        self._publish()
        return len(rows)

    def _settle(
        self,
        conn: Connection,
        row: dict[str, Any],
        ok: bool,
        retryable: bool,
        outcome: str,
        took: float,
    ) -> None:
        now = self._clock()
        attempts = row["attempts"] + 1
        conn.execute(
            insert(outbox_attempts).values(
                message_id=row["id"],
                ts=now,
                attempt=attempts,
                outcome=outcome[:128],
                ok=ok,
                duration_ms=took * 1000.0,
            )
        )
        values: dict[str, Any] = {
            "attempts": attempts,
            "lease_until": None,
            "last_error": None if ok else outcome[:500],
        }
        if ok:
            values.update(status="delivered", delivered_at=now)
            result = "delivered"
        elif retryable and attempts < row["max_attempts"]:
            values.update(next_at=now + backoff_s(attempts, self._rng))
            result = "retry"
        else:
            values.update(status="failed")
            result = "failed"
            log.warning(
                "notification %s to %s failed after %s attempts: %s",
                row["id"],
                host_of(row["url"]),
                attempts,
                outcome,
            )
        conn.execute(update(outbox).where(outbox.c.id == row["id"]).values(**values))
        if self.metrics is not None:
            self.metrics.outbox_attempts.labels(row["topic"], result).inc()

    def _publish(self) -> None:
        if self.metrics is None:
            return
        pending, oldest = self.backlog()
        self.metrics.outbox_pending.set(pending)
        self.metrics.outbox_oldest_s.set(max(0.0, self._clock() - oldest) if oldest else 0.0)

    def backlog(self) -> tuple[int, float | None]:
        """Messages waiting, and when the oldest of them was queued."""
        with self.engine.connect() as conn:
            n, oldest = conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(
                    outbox.c.service == self.service, outbox.c.status == "pending"
                )
            ).one()
        return int(n or 0), oldest

    def messages(
        self, *, limit: int = 100, status: str | None = None, ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Messages, newest first, each with its attempts (payload decoded)."""
        q = select(outbox).where(outbox.c.service == self.service)
        if status is not None:
            q = q.where(outbox.c.status == status)
        if ids is not None:
            q = q.where(outbox.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(outbox.c.id.desc()).limit(limit)).mappings().all()
            found = [r["id"] for r in rows]
            tries = (
                conn.execute(
                    select(outbox_attempts)
                    .where(outbox_attempts.c.message_id.in_(found))
                    .order_by(outbox_attempts.c.id)
                )
                .mappings()
                .all()
                if found
                else []
            )
        by_msg: dict[int, list[dict[str, Any]]] = {}
        for t in tries:
            by_msg.setdefault(t["message_id"], []).append(
                {
                    "attempt": t["attempt"],
                    "ts": t["ts"],
                    "outcome": t["outcome"],
                    "ok": t["ok"],
                    "duration_ms": t["duration_ms"],
                }
            )
        out = []
        for r in rows:
            d = {str(k): v for k, v in r.items() if k not in ("headers", "lease_until")}
            d["payload"] = orjson.loads(r["payload"])
            d["attempt_log"] = by_msg.get(r["id"], [])
            out.append(d)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


__all__ = ["BACKOFF_S", "Outbox", "backoff_s", "enqueue", "enqueue_all", "host_of"]

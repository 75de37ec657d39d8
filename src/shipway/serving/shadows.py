"""Shadows: every answered row mirrored to each shadow version after the caller's answer is
committed, in the background, bounded and timed out, so shadows never change what or when a
caller hears. Their answers (or errors) go to ``shadow_decisions``.

At shutdown :meth:`Shadows.drain` stops new mirroring and waits for the shadow calls already
started, so every one of them is logged before the shadow log closes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shipway.decisions import ShadowLog
from shipway.decisions.records import shadow_rows
from shipway.errors import ShipwayError
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Row
from shipway.serving.router import Job, Lane

_perf = time.perf_counter


class Shadows:
    def __init__(
        self,
        service: str,
        log: ShadowLog,
        metrics: ServiceMetrics,
        *,
        timeout_s: float,
        max_pending: int,
    ) -> None:
        self.service = service
        self.log = log
        self.metrics = metrics
        self.timeout = timeout_s
        self.max_pending = max_pending
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, shadows: tuple[Lane, ...], ids: list[str], values: list[Row]) -> None:
        """Mirror answered rows to each shadow lane (skipped when too much is pending)."""
        for lane in shadows:
            if self.closing or lane.in_flight + len(values) > self.max_pending:
                self.metrics.shadow_skipped.labels(lane.label).inc(len(values))
                continue
            task = asyncio.ensure_future(self._shadow(lane, ids, values))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(self, lane: Lane, ids: list[str], values: list[Row]) -> None:
        n = len(values)
        lane.in_flight += n
        fut = lane.submit(Job(values))

        def _done(_f: asyncio.Future[Any]) -> None:
            lane.in_flight -= n
            if not _f.cancelled():
                _f.exception()  # retrieved, so a late failure is not reported as unhandled

        fut.add_done_callback(_done)
        t0 = _perf()
        error: str | None = None
        pred: Predictions | None = None
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
            if isinstance(res, Exception):
                raise res
            pred = res
        except TimeoutError:
            error = f"timeout: no answer within {self.timeout * 1000:.0f} ms"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
        latency_ms = (_perf() - t0) * 1000.0
        version = lane.version
        if pred is None:
            self.metrics.shadow_errors.labels(str(version)).inc(n)
        else:  # a shadow's calls are billed like any other
            if pred.cost is not None:
                self.metrics.cost.inc(sum(c for c in pred.cost if c))
            if pred.tokens is not None:
                self.metrics.tokens.labels("prompt").inc(sum(t[0] for t in pred.tokens))
                self.metrics.tokens.labels("completion").inc(sum(t[1] for t in pred.tokens))
        rows = shadow_rows(
            ids,
            time.time(),
            self.service,
            version,
            pred.outputs if pred else None,
            pred.confidence if pred else None,
            latency_ms,
            error,
            pred.cost if pred else None,
        )
        try:
            await self.log.write(rows)
        except ShipwayError:
            self.metrics.shadow_errors.labels(str(version)).inc(n)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> None:
        """Take no new shadow work and wait for what was started (shutdown)."""
        self.closing = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout or self.timeout + 5.0)


__all__ = ["Shadows"]

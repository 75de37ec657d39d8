"""The traffic plan: which model version answers each row, and by which route.

A :class:`Lane` is one loaded model version behind its batching runner thread. A
:class:`Router` is an immutable plan over lanes: the champion, optionally a canary taking a
share of rows (sticky by an input field or a header when a key is set), and shadows that see
every answered row but never answer. The service swaps in a new Router when the rollout state
changes; requests in flight keep the lanes they already hold.
"""

from __future__ import annotations

import asyncio
import random
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shipway.concurrency import BatchWorker
from shipway.decisions import DecisionLog
from shipway.errors import ModelTimeout, StoreError
from shipway.manifest import BatchingSpec, BreakerSpec
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Predictor, Row
from shipway.serving.guards import Breaker, OutputCheck

PENDING, TAKEN, ABANDONED = 0, 1, 2
_claim = threading.Lock()


@dataclass(slots=True, eq=False)
class Job:
    """Rows for one model call, and how to check and record their answers.

    ``check`` runs on the runner right after the model answers and marks each answer that
    fails it (``Predictions.invalid``; a wrong number of answers fails the whole job with
    :class:`OutputInvalid`); ``record`` then returns the decision rows of the good answers.
    Every job of a model batch is committed in one transaction before any caller is woken.
    A caller that stops waiting (timeout) abandons its job: the runner then neither scores nor
    records it, so a late answer never becomes a second decision. Shadow jobs record nothing.
    """

    rows: Sequence[Row]
    record: Callable[[Predictions], list[dict[str, Any]]] | None = None
    check: OutputCheck | None = None
    state: int = PENDING

    def take(self) -> bool:
        """The runner claims the job for recording (False: its caller already gave up)."""
        with _claim:
            if self.state == PENDING:
                self.state = TAKEN
                return True
            return False

    def abandon(self) -> bool:
        """The caller gives up (False: the answer is already being recorded; wait for it)."""
        with _claim:
            if self.state == PENDING:
                self.state = ABANDONED
                return True
            return False


def _split(pred: Predictions, jobs: list[Job]) -> list[Predictions]:
    out: list[Predictions] = []
    start = 0
    for job in jobs:
        end = start + len(job.rows)
        cost = pred.cost[start:end] if pred.cost is not None else None
        proba = pred.proba[start:end] if pred.proba is not None else None
        invalid = pred.invalid[start:end] if pred.invalid is not None else None
        tokens = pred.tokens[start:end] if pred.tokens is not None else None
        out.append(
            Predictions(
                pred.outputs[start:end],
                pred.confidence[start:end],
                cost,
                proba,
                pred.classes,
                invalid,
                tokens,
            )
        )
        start = end
    return out


def _settle(
    jobs: list[Job], preds: list[Predictions], log: DecisionLog | None
) -> list[Predictions | Exception]:
    """Check each job's answers, then commit the decisions of every job still wanted."""
    results: list[Predictions | Exception] = []
    decisions: list[dict[str, Any]] = []
    recorded: list[int] = []
    for i, (job, pred) in enumerate(zip(jobs, preds, strict=True)):
        if job.check is not None:
            marked = job.check.mark(pred, len(job.rows))
            if isinstance(marked, Exception):
                results.append(marked)
                continue
            pred = marked
        results.append(pred)
        if job.record is not None and job.take():
            decisions.extend(job.record(pred))
            recorded.append(i)
    if decisions and log is not None:
        try:
            log.write_sync(decisions)  # group commit: the whole model batch at once
        except StoreError as exc:
            for i in recorded:
                results[i] = exc
    return results


def _run_batches(
    predictor: Predictor, metrics: ServiceMetrics | None, log: DecisionLog | None
) -> Callable[[list[Job]], list[Predictions | Exception]]:
    def handle(jobs: list[Job]) -> list[Predictions | Exception]:
        live = [j for j in jobs if j.state != ABANDONED]  # nobody waits for the others
        if not live:
            return [ModelTimeout("abandoned before the model was called")] * len(jobs)
        if len(live) == 1:
            rows = live[0].rows
            preds = [predictor.predict(rows)]
        else:
            rows = [r for job in live for r in job.rows]
            preds = _split(predictor.predict(rows), live)
        if metrics is not None:
            metrics.model_batch_rows.observe(len(rows))
        settled = _settle(live, preds, log)
        if len(live) == len(jobs):
            return settled
        by_job = {id(j): r for j, r in zip(live, settled, strict=True)}
        gone = ModelTimeout("abandoned before the model was called")
        return [by_job.get(id(j), gone) for j in jobs]

    return handle


@dataclass(eq=False)
class Lane:
    """One model version ready to answer, with its own circuit breaker.

    A model that runs in this process sits behind a batching runner thread: the runner scores
    every job queued so far in one model call and commits their decisions in one
    transaction, so a request costs one hand-off to that thread and one back. A model served
    over HTTP (``is_async``) is awaited on the event loop instead, one call per job.
    """

    version: int | None
    predictor: Predictor
    metrics: ServiceMetrics | None = None
    log: DecisionLog | None = None
    batching: BatchingSpec | None = None
    breaker: Breaker | None = None
    name: str = ""
    runner: BatchWorker[Job, Predictions | Exception] | None = field(init=False, default=None)
    in_flight: int = field(default=0, init=False)
    """Rows submitted and not yet answered (used to bound shadow work)."""

    def __post_init__(self) -> None:
        self.is_async = bool(getattr(self.predictor, "is_async", False))
        if not self.name:
            self.name = f"v{self.version}"
        # how metrics name this lane: its version, or the fallback model's name
        self.label = str(self.version) if self.version is not None else self.name
        if self.breaker is None:
            self.breaker = Breaker(BreakerSpec(failures=0))
        if not self.is_async:
            spec = self.batching or BatchingSpec()
            self.runner = BatchWorker(
                _run_batches(self.predictor, self.metrics, self.log),
                name=f"shipway-model-{self.name}",
                max_items=spec.max_batch if spec.enabled else 1,
                weight=lambda job: len(job.rows),
                max_wait_s=spec.max_wait_ms / 1000.0 if spec.enabled else 0.0,
            )
        self._tasks: set[asyncio.Task[Any]] = set()

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Start scoring ``job``; the future holds Predictions or the exception to raise."""
        if self.runner is not None:
            return self.runner.submit(job)
        task = asyncio.ensure_future(self._call_async(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call_async(self, job: Job) -> Predictions | Exception:
        pred = await self.predictor.apredict(job.rows)  # type: ignore[attr-defined]
        if self.metrics is not None:
            self.metrics.model_batch_rows.observe(len(job.rows))
        if job.check is not None:
            marked = job.check.mark(pred, len(job.rows))
            if isinstance(marked, Exception):
                return marked
            pred = marked
        if job.record is not None and job.take() and self.log is not None:
            try:
                await self.log.write(job.record(pred))
            except StoreError as exc:
                return exc
        return pred

    def start(self) -> None:
        if self.runner is not None:
            self.runner.start()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()


def bucket(value: Any) -> float:
    """A stable position in [0, 100) for a routing key (the same key, the same bucket)."""
    return (zlib.crc32(str(value).encode()) % 10_000) / 100.0


@dataclass(frozen=True)
class Route:
    lane: Lane
    route: str
    rows: list[int]


class Router:
    """Champion, optional canary share and key, shadows. Immutable once built."""

    def __init__(
        self,
        champion: Lane,
        *,
        canary: Lane | None = None,
        percent: float = 0.0,
        key: str | None = None,
        shadows: Sequence[Lane] = (),
        names: Sequence[str] = (),
        generation: int = 0,
        stopped: str | None = None,
    ) -> None:
        self.champion = champion
        self.stopped = stopped
        """The stop switch's reason while it is on (no model is called), else None."""
        self.canary = canary if canary is not None and percent > 0 else None
        self.percent = percent
        self.shadows = tuple(shadows)
        self.generation = generation
        self._header: str | None = None
        self._field: int | None = None
        if key:
            if key.lower().startswith("header:"):
                self._header = key.split(":", 1)[1].strip().lower()
            else:
                name = key.removeprefix("inputs.")
                self._field = list(names).index(name) if name in names else None
        self.key = key

    def lanes(self) -> list[Lane]:
        out = [self.champion]
        if self.canary is not None:
            out.append(self.canary)
        out.extend(self.shadows)
        return out

    def split(self, values: Sequence[Row], headers: Mapping[str, str] | None) -> list[Route]:
        """Assign each row to the champion or the canary."""
        n = len(values)
        if self.canary is None:
            return [Route(self.champion, "champion", list(range(n)))]
        if self._field is not None:
            f = self._field
            to_canary = [bucket(v[f]) < self.percent for v in values]
        else:
            if self._header is not None and headers is not None and self._header in headers:
                pick = bucket(headers[self._header]) < self.percent
            else:
                pick = random.random() * 100.0 < self.percent
            to_canary = [pick] * n
        canary_rows = [i for i, c in enumerate(to_canary) if c]
        champion_rows = [i for i, c in enumerate(to_canary) if not c]
        out = []
        if champion_rows:
            out.append(Route(self.champion, "champion", champion_rows))
        if canary_rows:
            out.append(Route(self.canary, "canary", canary_rows))
        return out


__all__ = ["Job", "Lane", "Route", "Router", "bucket"]

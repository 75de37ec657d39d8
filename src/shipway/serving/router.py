"""The traffic plan: which model version answers each row, and by which route.

A :class:`Lane` is one loaded model version behind its batching runner thread. A
:class:`Router` is an immutable plan over lanes: the champion, optionally a canary taking a
share of rows (sticky by an input field or a header when a key is set), and shadows that see
every answered row but never answer. The service swaps in a new Router when the rollout state
changes; requests in flight keep the lanes they already hold.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shipway.concurrency import BatchWorker
from shipway.decisions import DecisionLog
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Predictor, Row

#: Rows one model call takes at most when concurrent requests are gathered.
MAX_MODEL_BATCH = 256


@dataclass(slots=True)
class Job:
    """Rows for one model call, and how to record their decisions once answered.

    ``record`` runs on the lane's runner thread right after the model answers and returns the
    decision rows to commit; every job of a model batch is committed in one transaction
    before any caller is woken. Shadow jobs have no ``record``.
    """

    rows: Sequence[Row]
    record: Callable[[Predictions], list[dict[str, Any]]] | None = None


def _split(pred: Predictions, jobs: list[Job]) -> list[Predictions]:
    out: list[Predictions] = []
    start = 0
    for job in jobs:
        end = start + len(job.rows)
        out.append(Predictions(pred.outputs[start:end], pred.confidence[start:end]))
        start = end
    return out


def _run_batches(
    predictor: Predictor, metrics: ServiceMetrics | None, log: DecisionLog | None
) -> Callable[[list[Job]], list[Predictions]]:
    def handle(jobs: list[Job]) -> list[Predictions]:
        if len(jobs) == 1:
            rows = jobs[0].rows
            preds = [predictor.predict(rows)]
        else:
            rows = [r for job in jobs for r in job.rows]
            preds = _split(predictor.predict(rows), jobs)
        if metrics is not None:
            metrics.model_batch_rows.observe(len(rows))
        if log is not None:
            decisions: list[dict[str, Any]] = []
            for job, pred in zip(jobs, preds, strict=True):
                if job.record is not None:
                    decisions.extend(job.record(pred))
            if decisions:
                log.write_sync(decisions)  # group commit: the whole model batch at once
        return preds

    return handle


@dataclass(eq=False)
class Lane:
    """One model version ready to answer: its predictor behind a batching runner thread.

    The runner scores every job queued so far in one model call and commits their decisions
    in one transaction, so a request costs one hand-off to this thread and one back.
    """

    version: int
    predictor: Predictor
    metrics: ServiceMetrics | None = None
    log: DecisionLog | None = None
    runner: BatchWorker[Job, Predictions] = field(init=False)
    in_flight: int = field(default=0, init=False)
    """Rows submitted and not yet answered (used to bound shadow work)."""

    def __post_init__(self) -> None:
        self.runner = BatchWorker(
            _run_batches(self.predictor, self.metrics, self.log),
            name=f"shipway-model-v{self.version}",
            max_items=MAX_MODEL_BATCH,
            weight=lambda job: len(job.rows),
        )

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
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
    ) -> None:
        self.champion = champion
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


__all__ = ["MAX_MODEL_BATCH", "Job", "Lane", "Route", "Router", "bucket"]

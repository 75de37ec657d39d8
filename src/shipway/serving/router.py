"""The traffic plan: which model version answers a request, and by which route."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shipway.concurrency import BatchWorker
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Predictor, Row

#: Rows one model call takes at most when concurrent requests are gathered.
MAX_MODEL_BATCH = 256


def _run_batches(predictor: Predictor, metrics: ServiceMetrics | None):  # type: ignore[no-untyped-def]
    def handle(items: list[Sequence[Row]]) -> list[Predictions]:
        if len(items) == 1:
            rows = items[0]
            if metrics is not None:
                metrics.model_batch_rows.observe(len(rows))
            return [predictor.predict(rows)]
        flat = [r for rows in items for r in rows]
        if metrics is not None:
            metrics.model_batch_rows.observe(len(flat))
        pred = predictor.predict(flat)
        out: list[Predictions] = []
        start = 0
        for rows in items:
            end = start + len(rows)
            out.append(Predictions(pred.outputs[start:end], pred.confidence[start:end]))
            start = end
        return out

    return handle


@dataclass
class Lane:
    """One model version ready to answer: its predictor behind a batching runner thread."""

    route: str
    version: int
    predictor: Predictor
    metrics: ServiceMetrics | None = None
    runner: BatchWorker[Sequence[Row], Predictions] = field(init=False)

    def __post_init__(self) -> None:
        self.runner = BatchWorker(
            _run_batches(self.predictor, self.metrics),
            name=f"shipway-model-v{self.version}",
            max_items=MAX_MODEL_BATCH,
            weight=len,
        )

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()


class Router:
    """Champion-only for now: every request goes to the champion lane."""

    def __init__(self, champion: Lane) -> None:
        self.champion = champion

    def pick(self) -> Lane:
        return self.champion

    def lanes(self) -> list[Lane]:
        return [self.champion]


__all__ = ["MAX_MODEL_BATCH", "Lane", "Router"]

"""Prometheus metrics, one registry per service (never the process-global one).

The three figures every request moves (requests by route and status, their latency, decisions
by route and version) are kept as plain numbers on the event loop's thread and turned into
Prometheus families when ``/metrics`` is read (:class:`_RequestFigures`): the request path
then costs a dictionary update instead of a lock and a label lookup per figure.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)


class _RequestFigures:
    """Requests, their latency and decisions, counted without locks by the one thread that
    answers requests (the event loop), exposed as Prometheus families at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # per route: one count per bucket, then sum
        self.decisions: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Any]:
        req = CounterMetricFamily(
            "shipway_http_requests",
            "HTTP requests by route and status.",
            labels=["route", "status"],
        )
        for (route, status), n in list(self.requests.items()):
            req.add_metric([route, str(status)], n)
        yield req
        lat = HistogramMetricFamily(
            "shipway_http_request_duration_seconds",
            "HTTP request latency by route.",
            labels=["route"],
        )
        for route, counts in list(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=False):
                cumulative += in_bucket
                buckets.append((_bound(bound), cumulative))
            lat.add_metric([route], buckets, sum_value=counts[-1])
        yield lat
        dec = CounterMetricFamily(
            "shipway_decisions",
            "Answered rows by decision route and model version.",
            labels=["route", "model_version"],
        )
        for (route, version), n in list(self.decisions.items()):
            dec.add_metric([route, version], n)
        yield dec

    def describe(self) -> Iterator[Any]:
        return iter(())


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.service = service
        self._figures = _RequestFigures()
        r.register(self._figures)
        self.contract_violations = Counter(
            "shipway_contract_violations",
            "Contract violations by field and rule.",
            ["field", "rule"],
            registry=r,
        )
        self.unseen_values = Counter(
            "shipway_unseen_values",
            "Category values outside the contract's list, answered (on_unseen: warn), by field.",
            ["field"],
            registry=r,
        )
        self.rejected_rows = Counter(
            "shipway_rejected_rows",
            "Rows refused for breaking the contract.",
            registry=r,
        )
        self.model_errors = Counter(
            "shipway_model_errors",
            "Failed model calls by model version and error code (timeouts, bad answers, ...).",
            ["model_version", "code"],
            registry=r,
        )
        self.retries = Counter(
            "shipway_model_retries",
            "Model calls retried after a retryable failure, by model version.",
            ["model_version"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "shipway_breaker_state",
            "Circuit breaker per model version: 0 closed, 1 half-open, 2 open.",
            ["model_version"],
            registry=r,
        )
        self.breaker_opened = Counter(
            "shipway_breaker_opened",
            "Times a model version's circuit breaker opened.",
            ["model_version"],
            registry=r,
        )
        self.invalid_answers = Counter(
            "shipway_invalid_answers",
            "Model answers that failed the output checks (each such row fell back), by model.",
            ["model_version"],
            registry=r,
        )
        self.fallbacks = Counter(
            "shipway_fallback_rows",
            "Rows answered by a fallback step, by route (fallback:NAME, cache, default).",
            ["route"],
            registry=r,
        )
        self.unanswered = Counter(
            "shipway_unanswered_rows",
            "Rows the model and every fallback failed to answer (503 to the caller).",
            registry=r,
        )
        self.rate_limited = Counter(
            "shipway_rate_limited", "Requests refused with 429 (caller's rate limit).", registry=r
        )
        self.shed = Counter(
            "shipway_shed", "Requests shed with 503 (too much in flight).", registry=r
        )
        self.cache_hits = Counter(
            "shipway_cache_hits", "Rows answered from the response cache.", registry=r
        )
        self.cost = Counter(
            "shipway_cost", "Money spent on model calls (endpoint token prices).", registry=r
        )
        self.tokens = Counter(
            "shipway_tokens",
            "Tokens model endpoints billed (prompt, completion), every attempt included.",
            ["kind"],
            registry=r,
        )
        self.model_batch_rows = Histogram(
            "shipway_model_batch_rows",
            "Rows per model call (after batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.model_loaded = Gauge(
            "shipway_model_loaded",
            "1 when the champion model is loaded.",
            registry=r,
        )
        self.shadow_skipped = Counter(
            "shipway_shadow_skipped_rows",
            "Rows not mirrored to a shadow (too much pending).",
            ["model_version"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "shipway_shadow_errors",
            "Shadow rows that failed or timed out.",
            ["model_version"],
            registry=r,
        )
        self.rollout = Gauge(
            "shipway_rollout_version",
            "Model version per role in the current rollout plan (0: none).",
            ["role"],
            registry=r,
        )
        self.canary_percent = Gauge(
            "shipway_canary_percent", "Share of traffic sent to the canary.", registry=r
        )
        self.monitor_figure = Gauge(
            "shipway_monitor",
            "The monitor's latest window: drift_share, error_rate, p99_ms, accuracy, ...",
            ["figure"],
            registry=r,
        )
        self.feature_drift = Gauge(
            "shipway_feature_drift_effect",
            "Latest drift effect size per input (Wasserstein/std or Jensen-Shannon).",
            ["feature"],
            registry=r,
        )
        self.feature_drifted = Gauge(
            "shipway_feature_drifted",
            "1 when the input drifted in the latest window (significant and large).",
            ["feature"],
            registry=r,
        )
        self.outbox_attempts = Counter(
            "shipway_outbox_attempts",
            "Notification delivery attempts by topic and result (delivered, retry, failed).",
            ["topic", "result"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "shipway_outbox_pending", "Notifications waiting to be delivered.", registry=r
        )
        self.outbox_oldest_s = Gauge(
            "shipway_outbox_oldest_pending_seconds",
            "Age of the oldest notification waiting to be delivered.",
            registry=r,
        )
        self.job_runs = Counter(
            "shipway_job_runs",
            "Scheduled task runs by task and result (ok, failed, skipped: another replica).",
            ["task", "result"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "shipway_job_duration_seconds",
            "Scheduled task run time by task.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_last_ok = Gauge(
            "shipway_job_last_success_timestamp_seconds",
            "When each scheduled task last succeeded (Unix time).",
            ["task"],
            registry=r,
        )

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        f = self._figures
        key = (route, status)
        f.requests[key] = f.requests.get(key, 0) + 1
        counts = f.latency.get(route)
        if counts is None:
            counts = f.latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def count_decisions(self, route: str, version: int | None, n: int) -> None:
        d = self._figures.decisions
        key = (route, str(version))
        d[key] = d.get(key, 0) + n

    def publish_monitor(self, ctx: dict[str, object], result: dict[str, object]) -> None:
        for name, value in ctx.items():
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int | float):
                self.monitor_figure.labels(name).set(float(value))
        drift = result.get("drift")
        if isinstance(drift, dict):
            for feature, f in drift.get("features", {}).items():
                if f.get("effect") is not None:
                    self.feature_drift.labels(feature).set(float(f["effect"]))
                self.feature_drifted.labels(feature).set(1.0 if f.get("drifted") else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ServiceMetrics"]

"""Prometheus metrics, one registry per service (never the process-global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.service = service
        self.http_requests = Counter(
            "shipway_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "shipway_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "shipway_decisions",
            "Answered rows by decision route and model version.",
            ["route", "model_version"],
            registry=r,
        )
        self.contract_violations = Counter(
            "shipway_contract_violations",
            "Contract violations by field and rule.",
            ["field", "rule"],
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
        self._http_children: dict[tuple[str, int], Counter] = {}
        self._lat_children: dict[str, Histogram] = {}

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        c = self._http_children.get(key)
        if c is None:
            c = self._http_children[key] = self.http_requests.labels(route, str(status))
        c.inc()
        h = self._lat_children.get(route)
        if h is None:
            h = self._lat_children[route] = self.http_latency.labels(route)
        h.observe(seconds)

    def violations_by_field(self) -> dict[str, float]:
        """Contract violations counted by this process, as ``field:rule`` → count."""
        out: dict[str, float] = {}
        for metric in self.contract_violations.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = f"{sample.labels['field']}:{sample.labels['rule']}"
                    out[key] = sample.value
        return out

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

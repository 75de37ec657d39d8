"""The monitor: one window of decisions in, drift, performance and operations figures out,
stored, exposed and held against the alert rules.

A window is the last ``monitor.window`` of time, or the last ``monitor.window_rows``
decisions. Drift is measured against the champion's reference data recorded at ``init`` (or
at ``models add``): every input, the output, and the confidence. Performance uses the newest
feedback label of each decision in the window, with its count. Operations come from the
decision log itself (rate, errors, latency, fallbacks, cost).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, desc, insert, select

from shipway.data import ledger
from shipway.decisions import labels, queries
from shipway.decisions.records import INVALID_ANSWER
from shipway.manifest import SOURCE_FIGURES, Manifest
from shipway.models import Registry
from shipway.monitor.alerts import AlertBook
from shipway.monitor.drift import Reference, calibrate_floors, drift_report
from shipway.store import Store
from shipway.store.tables import monitor_results

log = logging.getLogger("shipway.monitor")

FALLBACK_ROUTES = ("fallback:", "cache", "default", "stopped")


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def performance(
    kind: str, labels: list[Any], outputs: list[Any], confidence: list[Any], classes: list[Any]
) -> dict[str, Any]:
    """Accuracy, per-label precision/recall/F1, macro F1 and ROC AUC (binary), or MAE/RMSE."""
    n = len(labels)
    out: dict[str, Any] = {"labeled": n}
    if n == 0:
        return out
    if kind == "regression":
        y = np.asarray(labels, dtype=float)
        p = np.asarray(outputs, dtype=float)
        out["mae"] = float(np.mean(np.abs(y - p)))
        out["rmse"] = float(math.sqrt(np.mean((y - p) ** 2)))
        return out
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    ys = [str(v) for v in labels]
    ps = [str(v) for v in outputs]
    names = [str(c) for c in classes]
    out["accuracy"] = float(np.mean([a == b for a, b in zip(ys, ps, strict=True)]))
    prec, rec, f1, support = precision_recall_fscore_support(ys, ps, labels=names, zero_division=0)
    out["per_label"] = {
        c: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(names)
    }
    out["f1_macro"] = float(np.mean(f1)) if len(f1) else None
    if len(names) == 2 and all(c is not None for c in confidence) and len(set(ys)) == 2:
        pos = names[1]
        score = [c if o == pos else 1.0 - c for o, c in zip(ps, confidence, strict=True)]
        out["roc_auc"] = float(roc_auc_score([y == pos for y in ys], score))
    return out


@dataclass
class Window:
    start: float | None
    end: float
    rows: list[dict[str, Any]]


class Monitor:
    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        *,
        champion: Callable[[], int],
        actions: dict[str, Callable[[str], str]] | None = None,
        metrics: Any = None,
        review_figures: Callable[[float | None, float], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.engine: Engine = store.engine
        self.manifest = manifest
        self.spec = manifest.monitor
        self.service = manifest.service.name
        self.champion = champion
        self.registry = Registry(store)
        self.alerts = AlertBook(self.engine, self.service, self.spec, actions or {})
        self.metrics = metrics
        self.review_figures = review_figures
        self._refs: dict[int, tuple[Reference, Reference]] = {}

    # -- reference -----------------------------------------------------------------------

    def reference(self, version: int) -> tuple[Reference, Reference]:
        """Inputs reference and outputs reference (output, confidence) of a version."""
        if version in self._refs:
            return self._refs[version]
        mv = self.registry.get(self.service, version)
        # drift is measured on model inputs only: ids and metadata change by nature (a new
        # customer id per row, a later date each day), so testing them says nothing
        kinds = {
            f.name: f.type
            for f in self.manifest.contract.inputs
            if f.role == "feature" and f.type != "datetime"
        }
        if not mv.reference_sha256:
            empty = (Reference(), Reference())
            self._refs[version] = empty
            return empty
        table = pq.read_table(io.BytesIO(self.store.artifacts.read_verified(mv.reference_sha256)))
        cols = {n: table.column(n) for n in kinds if n in table.column_names}
        inputs = Reference.build(cols, kinds)
        floors = {}
        if self.spec.calibrate_floors:
            floors = calibrate_floors(
                {n: c.to_numpy(zero_copy_only=False) for n, c in cols.items()}, kinds
            )
        inputs.floors = {**floors, **self.spec.floors}
        out_kind = "category" if self.manifest.output.kind == "classification" else "float"
        out_cols: dict[str, Any] = {}
        out_kinds: dict[str, str] = {}
        if "__output__" in table.column_names:
            out_cols["output"] = table.column("__output__")
            out_kinds["output"] = out_kind
        if "__confidence__" in table.column_names:
            conf = table.column("__confidence__")
            if conf.null_count < len(conf):
                out_cols["confidence"] = conf
                out_kinds["confidence"] = "float"
        outputs = Reference.build(out_cols, out_kinds)
        self._refs[version] = (inputs, outputs)
        return inputs, outputs

    # -- the window ----------------------------------------------------------------------

    def window(self, now: float | None = None) -> Window:
        now = time.time() if now is None else now
        start: float | None
        if self.spec.window_rows:
            rows = queries.window(self.engine, self.service, end=now, last=self.spec.window_rows)
            start = rows[0]["ts"] if rows else None
        else:
            start = now - self.spec.window.seconds
            rows = queries.window(self.engine, self.service, start=start, end=now)
        return Window(start, now, rows)

    def compute(self, win: Window) -> dict[str, Any]:
        rows = win.rows
        n = len(rows)
        result: dict[str, Any] = {
            "service": self.service,
            "window_start": win.start,
            "window_end": win.end,
            "n": n,
        }
        # operations
        errors = [r for r in rows if r["error"] is not None]
        answered = [r for r in rows if r["error"] is None]
        lat = np.asarray([r["latency_ms"] for r in rows], dtype=float)
        span = (win.end - win.start) if win.start is not None and win.end > win.start else None
        fell_back = sum(1 for r in answered if r["route"].startswith(FALLBACK_ROUTES))
        result["operations"] = {
            "n": n,
            "request_rate": (n / span) if span else None,
            "error_rate": len(errors) / n if n else None,
            "p50_ms": _pct(lat, 50),
            "p95_ms": _pct(lat, 95),
            "p99_ms": _pct(lat, 99),
            "fallback_share": fell_back / n if n else None,
            # rows a model answered unreadably (they fell back; see serving/chain.py)
            "invalid_answer_rate": (
                sum(1 for r in rows if r["reason"] and INVALID_ANSWER in r["reason"]) / n
                if n
                else None
            ),
            "cost": float(sum(r["cost"] or 0.0 for r in rows)),
            "prompt_tokens": int(sum(r["prompt_tokens"] or 0 for r in rows)),
            "completion_tokens": int(sum(r["completion_tokens"] or 0 for r in rows)),
            "by_route": _count(r["route"] for r in rows),
            "by_version": _count(str(r["model_version"]) for r in rows),
        }
        # requests the contract refused, from the store (so restarts and replicas agree); a
        # window of rows that holds no decision still counts the last `window` of refusals
        since = win.start if win.start is not None else win.end - self.spec.window.seconds
        refused = queries.rejection_figures(self.engine, self.service, since, win.end)
        result["operations"]["shadow_cost"] = queries.shadow_cost(
            self.engine, self.service, since, win.end
        )
        result["sources"] = self.sources(since, win.end)
        offered = n + refused["rows"]
        result["operations"].update(
            rejected=refused["rows"],
            rejected_requests=refused["requests"],
            rejected_share=refused["rows"] / offered if offered else None,
            contract_violations=refused["violations"],
        )
        # drift against the champion's reference
        champion = self.champion()
        result["model_version"] = champion
        inputs_ref, outputs_ref = self.reference(champion)
        model_rows = [r for r in answered if not r["route"].startswith(FALLBACK_ROUTES)]
        if len(model_rows) >= self.spec.min_rows and inputs_ref.features():
            decoded = [r["inputs"] for r in model_rows]
            current = {
                name: pa.array([d.get(name) for d in decoded]) for name in inputs_ref.features()
            }
            result["drift"] = drift_report(inputs_ref, current, self.spec.alpha)
            out_current: dict[str, Any] = {}
            if "output" in outputs_ref.features():
                outs = [r["output"] for r in model_rows]
                out_current["output"] = pa.array(
                    [str(o) for o in outs]
                    if self.manifest.output.kind == "classification"
                    else [float(o) for o in outs]
                )
            if "confidence" in outputs_ref.features():
                out_current["confidence"] = pa.array(
                    [r["confidence"] for r in model_rows if r["confidence"] is not None],
                    type=pa.float64(),
                )
            result["output_drift"] = drift_report(outputs_ref, out_current, self.spec.alpha)
        else:
            result["drift"] = None
            result["output_drift"] = None
            result["drift_skipped"] = (
                f"{len(model_rows)} model answers in the window; drift needs "
                f"{self.spec.min_rows} (monitor.min_rows)"
            )
        # human review: how often people overrode the model in this window (the review
        # package hands this in, so neither package imports the other)
        if self.review_figures is not None:
            result["review"] = self.review_figures(win.start, win.end)
        else:
            result["review"] = {"reviewed": 0, "override_rate": None}
        # performance from feedback
        truth = labels.latest(self.engine, [r["id"] for r in answered])
        labeled = [r for r in answered if r["id"] in truth]
        kind, classes = self.manifest.output.kind, list(self.manifest.output.labels or [])

        def perf(rs: list[dict[str, Any]]) -> dict[str, Any]:
            return performance(
                kind,
                [truth[r["id"]] for r in rs],
                [r["output"] for r in rs],
                [r["confidence"] for r in rs],
                classes,
            )

        result["performance"] = perf(labeled)
        # the same per model version that answered (champion, canary, fallback versions)
        by_version: dict[str, dict[str, Any]] = {}
        for v in sorted({str(r["model_version"]) for r in rows}):
            vr = [r for r in rows if str(r["model_version"]) == v]
            vl = [r for r in labeled if str(r["model_version"]) == v]
            by_version[v] = {
                "n": len(vr),
                "error_rate": sum(1 for r in vr if r["error"] is not None) / len(vr),
                "p99_ms": _pct(np.asarray([r["latency_ms"] for r in vr], dtype=float), 99),
                "performance": perf(vl),
            }
        result["by_version"] = by_version
        return result

    @staticmethod
    def context(result: dict[str, Any]) -> dict[str, Any]:
        """The flat figures alert rules are written against."""
        ops = result.get("operations") or {}
        perf = result.get("performance") or {}
        drift = result.get("drift") or {}
        out_drift = result.get("output_drift") or {}
        feats = drift.get("features", {})
        outf = out_drift.get("features", {})
        return {
            "n": result.get("n", 0),
            "model_version": result.get("model_version"),
            **{
                k: ops.get(k)
                for k in (
                    "request_rate",
                    "error_rate",
                    "p50_ms",
                    "p95_ms",
                    "p99_ms",
                    "fallback_share",
                    "invalid_answer_rate",
                    "cost",
                    "shadow_cost",
                    "rejected",
                    "rejected_share",
                )
            },
            "drift_share": drift.get("drift_share") if drift else None,
            "drifted": len(drift.get("drifted", [])) if drift else None,
            "drifted_features": drift.get("drifted", []) if drift else [],
            "prediction_drift": bool(outf.get("output", {}).get("drifted")) if outf else None,
            "confidence_drift": bool(outf.get("confidence", {}).get("drifted")) if outf else None,
            "labeled": perf.get("labeled", 0),
            "reviewed": (result.get("review") or {}).get("reviewed", 0),
            "override_rate": (result.get("review") or {}).get("override_rate"),
            **{k: perf.get(k) for k in ("accuracy", "f1_macro", "roc_auc", "mae", "rmse")},
            **{
                figure: {n: s.get(figure) for n, s in (result.get("sources") or {}).items()}
                for figure in SOURCE_FIGURES
            },
            "drift": {
                k: {
                    "effect": v.get("effect"),
                    "p_adjusted": v.get("p_adjusted"),
                    "drifted": v.get("drifted"),
                }
                for k, v in feats.items()
            },
        }

    def sources(self, start: float, end: float) -> dict[str, dict[str, Any]]:
        """Per data source: freshness (seconds since it last scored a file, or since its
        first run if it never has; None before it ever ran), its level against the
        manifest's warn_after/error_after, and files failed or held in the window."""
        specs = {s.name: s for s in self.manifest.sources}
        out = ledger.freshness(self.engine, self.service, list(specs), start, end)
        for name, f in out.items():
            since = f["last_scored_at"] or f["first_run_at"]
            age = end - since if since is not None else None
            spec = specs[name]
            level = "ok"
            if age is not None and spec.error_after and age > spec.error_after.seconds:
                level = "error"
            elif age is not None and spec.warn_after and age > spec.warn_after.seconds:
                level = "warn"
            f.update(freshness_s=age, freshness=level)
        return out

    # -- a run ---------------------------------------------------------------------------

    def run(self, now: float | None = None) -> dict[str, Any]:
        """Compute one window, store it, evaluate the alert rules and act."""
        win = self.window(now)
        result = self.compute(win)
        ctx = self.context(result)
        result["alerts"] = self.alerts.evaluate(ctx, result)
        with self.engine.begin() as conn:
            conn.execute(
                insert(monitor_results).values(
                    service=self.service,
                    ts=time.time(),
                    window_start=win.start,
                    window_end=win.end,
                    rows=len(win.rows),
                    result=orjson.dumps(
                        result, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                    ).decode(),
                )
            )
        if self.metrics is not None:
            self.metrics.publish_monitor(ctx, result)
        return result

    def latest(self, limit: int = 1) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(monitor_results.c.result)
                    .where(monitor_results.c.service == self.service)
                    .order_by(desc(monitor_results.c.id))
                    .limit(limit)
                )
                .scalars()
                .all()
            )
        return [orjson.loads(r) for r in rows]


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


__all__ = ["Monitor", "Window", "performance"]

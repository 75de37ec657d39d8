"""Scoring a model on the service's holdout, and the evaluation gate."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from shipway.errors import ModelError, ShipwayError
from shipway.manifest import Manifest, OutputSpec
from shipway.models.predictor import Predictor, Row
from shipway.store import Store

#: Metrics where lower is better get a ``max`` threshold; the rest a ``min``.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "log_loss"})


def score(
    kind: str, y_true: list[Any], y_pred: list[Any], proba: np.ndarray | None, labels: list[Any]
) -> dict[str, float]:
    from sklearn import metrics as skm

    out: dict[str, float] = {}
    if kind == "classification":
        out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
        out["f1_macro"] = float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
        if proba is not None and len(set(y_true)) > 1:
            try:
                if len(labels) == 2:
                    out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
                else:
                    out["roc_auc"] = float(
                        skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
                    )
                out["log_loss"] = float(skm.log_loss(y_true, proba, labels=labels))
            except ValueError:
                pass
    else:
        yt = np.asarray(y_true, dtype=float)
        yp = np.asarray(y_pred, dtype=float)
        out["mae"] = float(np.mean(np.abs(yt - yp)))
        out["rmse"] = float(math.sqrt(np.mean((yt - yp) ** 2)))
        out["r2"] = float(skm.r2_score(yt, yp))
    return out


def probabilities(predictor: Predictor, rows: list[Row]) -> np.ndarray | None:
    fn = getattr(predictor, "predict_proba", None)
    if fn is None:
        return None
    try:
        return fn(rows)  # type: ignore[no-any-return]
    except Exception:
        return None


def evaluate(
    predictor: Predictor, output: OutputSpec, rows: list[Row], y: list[Any]
) -> dict[str, float]:
    """Metrics of ``predictor`` on ``rows`` with true labels ``y``; ModelError if it fails."""
    try:
        pred = predictor.predict(rows)
    except ShipwayError:
        raise
    except Exception as exc:
        raise ModelError(f"the model fails on the holdout: {type(exc).__name__}: {exc}") from None
    if len(pred.outputs) != len(rows):
        raise ModelError(f"the model answered {len(pred.outputs)} of {len(rows)} holdout rows")
    proba = probabilities(predictor, rows) if output.kind == "classification" else None
    return score(output.kind, y, pred.outputs, proba, list(output.labels or []))


def holdout(
    store: Store, reference_sha256: str | None, names: list[str]
) -> tuple[list[Row], list[Any]]:
    """The holdout rows (contract order) and labels kept in a version's reference data."""
    if not reference_sha256:
        raise ModelError("the champion has no reference data, so there is no holdout to score on")
    table = pq.read_table(io.BytesIO(store.artifacts.read_verified(reference_sha256)))
    mask = table.column("__holdout__").to_numpy(zero_copy_only=False)
    table = table.filter(mask)
    cols = [table.column(n).to_pylist() for n in names]
    y = table.column("__target__").to_pylist()
    return list(zip(*cols, strict=True)), y


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": self.checks}


def gate(
    manifest: Manifest, metrics: dict[str, float], champion: dict[str, float] | None
) -> GateResult:
    """Check the manifest's quality thresholds and the not-worse-than-champion margin."""
    res = GateResult(passed=True)
    q = manifest.quality
    for name, th in q.metrics.items():
        value = metrics.get(name)
        if value is None:
            res.reasons.append(f"{name} cannot be computed for this version")
            continue
        if th.min is not None:
            ok = value >= th.min
            (res.checks if ok else res.reasons).append(f"{name} {value:.4f} >= {th.min}")
        if th.max is not None:
            ok = value <= th.max
            (res.checks if ok else res.reasons).append(f"{name} {value:.4f} <= {th.max}")
    margin = q.not_worse_than_champion_by
    if margin is not None and champion:
        names = list(q.metrics) or list(champion)
        for name in names:
            if name not in metrics or name not in champion:
                continue
            mine, theirs = metrics[name], champion[name]
            if name in LOWER_IS_BETTER:
                ok = mine <= theirs + margin
                text = f"{name} {mine:.4f} <= champion {theirs:.4f} + {margin}"
            else:
                ok = mine >= theirs - margin
                text = f"{name} {mine:.4f} >= champion {theirs:.4f} - {margin}"
            (res.checks if ok else res.reasons).append(text)
    res.passed = not res.reasons
    return res


__all__ = ["LOWER_IS_BETTER", "GateResult", "evaluate", "gate", "holdout", "probabilities", "score"]

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

#: Metrics computed from class probabilities; a version without them cannot produce these.
PROBABILITY_METRICS = frozenset({"roc_auc", "log_loss"})


#: What a row the model gave no usable answer for counts as when scoring: always wrong.
NO_ANSWER = "(no answer)"


def score(
    kind: str, y_true: list[Any], y_pred: list[Any], proba: np.ndarray | None, labels: list[Any]
) -> dict[str, float]:
    from sklearn import metrics as skm

    out: dict[str, float] = {}
    if kind == "classification":
        out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
        # a missing answer is a miss for its true class, not a class of its own
        classes = sorted({*y_true, *y_pred} - {NO_ANSWER}, key=str) if NO_ANSWER in y_pred else None
        out["f1_macro"] = float(
            skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        )
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
        missing = sum(1 for v in y_pred if v is None)
        if missing:
            raise ModelError(
                f"the model gave no usable answer for {missing} of {len(y_pred)} holdout rows; "
                "a regression model is scored on every row"
            )
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
        return fn(rows)
    except Exception:
        return None


def evaluate(
    predictor: Predictor, output: OutputSpec, rows: list[Row], y: list[Any]
) -> dict[str, float]:
    """Metrics of ``predictor`` on ``rows`` with true labels ``y``; ModelError if it fails.
    A model over HTTP is called a few rows at a time; an answer it gave that cannot be read
    counts as wrong."""
    try:
        if getattr(predictor, "is_async", False):
            from shipway.models.endpoints import score_rows

            pred = score_rows(predictor, rows)  # type: ignore[arg-type]
        else:
            pred = predictor.predict(rows)
    except ShipwayError:
        raise
    except Exception as exc:
        raise ModelError(f"the model fails on the holdout: {type(exc).__name__}: {exc}") from None
    if len(pred.outputs) != len(rows):
        raise ModelError(f"the model answered {len(pred.outputs)} of {len(rows)} holdout rows")
    proba = probabilities(predictor, rows) if output.kind == "classification" else None
    outputs = pred.outputs
    if pred.invalid is not None and output.kind == "classification":
        outputs = [NO_ANSWER if bad else o for o, bad in zip(outputs, pred.invalid, strict=True)]
    return score(output.kind, y, outputs, proba, list(output.labels or []))


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
    notes: list[str] = field(default_factory=list)
    """What the gate could not check, and what it compared instead."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "checks": self.checks,
            "notes": self.notes,
        }


def _compare(res: GateResult, name: str, mine: float, theirs: float, margin: float) -> None:
    if name in LOWER_IS_BETTER:
        ok = mine <= theirs + margin
        text = f"{name} {mine:.4f} <= champion {theirs:.4f} + {margin}"
    else:
        ok = mine >= theirs - margin
        text = f"{name} {mine:.4f} >= champion {theirs:.4f} - {margin}"
    (res.checks if ok else res.reasons).append(text)


def gate(
    manifest: Manifest, metrics: dict[str, float], champion: dict[str, float] | None
) -> GateResult:
    """Check the manifest's quality thresholds and the not-worse-than-champion margin.

    A metric this version cannot produce (a model without class probabilities has no roc_auc
    or log_loss) fails the gate only with ``quality.on_missing_metric: fail``; otherwise it is
    noted and the champion comparison uses the metrics both versions produce. A gate that could
    check nothing at all fails.
    """
    res = GateResult(passed=True)
    q = manifest.quality
    missing: list[str] = []

    def cannot(name: str) -> None:
        if name in missing:
            return
        missing.append(name)
        why = " (it needs class probabilities)" if name in PROBABILITY_METRICS else ""
        text = f"{name} cannot be computed for this version{why}"
        if q.on_missing_metric == "fail":
            res.reasons.append(text)
        else:
            res.notes.append(f"{text}; not checked")

    for name, th in q.metrics.items():
        value = metrics.get(name)
        if value is None:
            cannot(name)
            continue
        if th.min is not None:
            ok = value >= th.min
            (res.checks if ok else res.reasons).append(f"{name} {value:.4f} >= {th.min}")
        if th.max is not None:
            ok = value <= th.max
            (res.checks if ok else res.reasons).append(f"{name} {value:.4f} <= {th.max}")
    margin = q.not_worse_than_champion_by
    if margin is not None and champion:
        compared = []
        for name in list(q.metrics) or list(champion):
            if name not in metrics:
                cannot(name)
            elif name not in champion:
                res.notes.append(f"{name} not compared with the champion, which cannot produce it")
            else:
                _compare(res, name, metrics[name], champion[name], margin)
                compared.append(name)
        if not compared and q.on_missing_metric == "note":
            shared = [n for n in champion if n in metrics]
            for name in shared:
                _compare(res, name, metrics[name], champion[name], margin)
            if shared:
                res.notes.append(
                    "compared with the champion on the metrics both versions produce: "
                    + ", ".join(shared)
                )
    if missing and not res.checks and not res.reasons:
        res.reasons.append("no metric the gate asks for can be computed for this version")
    res.passed = not res.reasons
    return res


__all__ = [
    "LOWER_IS_BETTER",
    "PROBABILITY_METRICS",
    "GateResult",
    "evaluate",
    "gate",
    "holdout",
    "probabilities",
    "score",
]

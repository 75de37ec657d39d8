"""Per-decision explanations for reviewers: which inputs pushed this answer most.

Permutation-based and model-agnostic: each input in turn takes the values of a few reference
rows while the others keep the decision's values, and the change in the model's support for
the answer it gave (its probability, or its confidence) is averaged. A positive effect means
the decision's own value of that input pushed towards the answer. All perturbed rows go to the
model in one call; this runs on demand when a reviewer asks, never on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _support(predictor: Any, rows: Sequence[tuple[Any, ...]], answer: Any) -> np.ndarray:
    proba = getattr(predictor, "predict_proba", None)
    classes = getattr(predictor, "classes", None)
    if proba is not None and classes is not None and answer in classes:
        p = proba(rows)
        if p is not None:
            return np.asarray(p)[:, list(classes).index(answer)]
    pred = predictor.predict(rows)
    outs = pred.outputs
    conf = [c if c is not None else 1.0 for c in pred.confidence]
    if (
        isinstance(answer, int | float)
        and not isinstance(answer, bool)
        and all(isinstance(o, int | float) for o in outs)
    ):
        return np.asarray(outs, dtype=float)  # regression: the predicted value itself
    return np.asarray([c if o == answer else 1.0 - c for o, c in zip(outs, conf, strict=True)])


def explain(
    predictor: Any,
    names: Sequence[str],
    row: tuple[Any, ...],
    answer: Any,
    reference: Sequence[tuple[Any, ...]],
    top: int = 5,
) -> list[dict[str, Any]]:
    """The ``top`` inputs by absolute effect on the support for ``answer``."""
    if not reference:
        return []
    base = float(_support(predictor, [row], answer)[0])
    perturbed = []
    for j in range(len(names)):
        for ref in reference:
            r = list(row)
            r[j] = ref[j]
            perturbed.append(tuple(r))
    support = _support(predictor, perturbed, answer).reshape(len(names), len(reference))
    effects = base - support.mean(axis=1)
    order = np.argsort(-np.abs(effects))[:top]
    return [{"feature": names[j], "value": row[j], "effect": float(effects[j])} for j in order]


__all__ = ["explain"]

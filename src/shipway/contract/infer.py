"""Inferring a contract and reference statistics from pilot data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from shipway.manifest import ContractSpec, InputField

#: A text column with at most this many distinct values (and repeats) becomes a category.
MAX_CATEGORIES = 50


def _py(v: Any) -> Any:
    """A NumPy/pandas scalar as a plain Python value."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _widen(lo: float, hi: float, margin: float, integer: bool) -> tuple[float, float]:
    span = hi - lo
    pad = span * margin if span > 0 else abs(hi) * margin
    new_lo, new_hi = lo - pad, hi + pad
    if lo >= 0 > new_lo:  # a quantity never seen negative stays non-negative
        new_lo = 0.0
    if integer:
        new_lo, new_hi = math.floor(new_lo), math.ceil(new_hi)
    return float(new_lo), float(new_hi)


def infer_field(name: str, s: pd.Series, range_margin: float = 0.1) -> InputField:
    nullable = bool(s.isna().any())
    nonnull = s.dropna()
    if pd.api.types.is_bool_dtype(s.dtype):
        return InputField(name=name, type="bool", nullable=nullable)
    if pd.api.types.is_numeric_dtype(s.dtype):
        values = nonnull.to_numpy(dtype=np.float64)
        integral = pd.api.types.is_integer_dtype(s.dtype) or (
            nullable and values.size > 0 and bool(np.all(np.mod(values, 1) == 0))
        )
        if values.size == 0:
            return InputField(name=name, type="int" if integral else "float", nullable=True)
        lo, hi = _widen(float(values.min()), float(values.max()), range_margin, integral)
        return InputField(
            name=name, type="int" if integral else "float", nullable=nullable, min=lo, max=hi
        )
    # text-like
    as_text = nonnull.astype(str)
    distinct = as_text.unique()
    if len(distinct) <= MAX_CATEGORIES and len(distinct) < max(2, 0.5 * len(as_text)):
        return InputField(
            name=name, type="category", nullable=nullable, values=sorted(map(str, distinct))
        )
    return InputField(name=name, type="string", nullable=nullable)


def infer_contract(frame: pd.DataFrame, range_margin: float = 0.1) -> ContractSpec:
    """A contract that the whole of ``frame`` satisfies."""
    return ContractSpec(inputs=[infer_field(str(c), frame[c], range_margin) for c in frame.columns])


def column_stats(s: pd.Series, kind: str) -> dict[str, Any]:
    """Summary statistics of one column, kept with a model version as its reference."""
    n = len(s)
    nulls = int(s.isna().sum())
    out: dict[str, Any] = {"n": n, "null_share": (nulls / n) if n else 0.0}
    nonnull = s.dropna()
    if kind in ("int", "float") and len(nonnull):
        v = nonnull.to_numpy(dtype=np.float64)
        qs = np.quantile(v, np.linspace(0, 1, 11))
        out.update(
            min=float(v.min()),
            max=float(v.max()),
            mean=float(v.mean()),
            std=float(v.std()),
            quantiles=[float(q) for q in qs],
        )
    elif len(nonnull):
        counts = nonnull.astype(str).value_counts()
        top = counts.head(MAX_CATEGORIES)
        out["frequencies"] = {str(k): int(c) for k, c in top.items()}
        out["distinct"] = int(counts.size)
    return out


__all__ = ["MAX_CATEGORIES", "column_stats", "infer_contract", "infer_field"]

"""Inferring a contract and reference statistics from pilot data."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
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


_ID_NAME = re.compile(r"(^|[_\s-])(id|uuid|guid|key|number|no)$", re.IGNORECASE)
_ID_CAMEL = re.compile(r"[a-z0-9](Id|ID|Uuid|UUID|Guid|GUID|Key|No|Number)$")  # customerId
_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


def _id_named(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _ID_CAMEL.search(name))


def looks_like_id(name: str, s: pd.Series) -> bool:
    """A column that names rows rather than describes them: no two rows share a value, it has
    no gaps, and it is whole numbers or text named like ``customer_id``, or UUIDs. Unique
    text with any other name (free text, e-mail addresses, names) stays an input: a model
    may read it, and ``--id`` says otherwise."""
    nonnull = s.dropna()
    if len(nonnull) < 10 or len(nonnull) != len(s) or nonnull.nunique() != len(nonnull):
        return False
    if pd.api.types.is_integer_dtype(s.dtype):
        return bool(_id_named(name))
    if pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype):
        if looks_like_datetime(s):
            return False
        if _id_named(name):
            return True
        return all(_UUID.match(str(v)) for v in nonnull.head(200))
    return False


def looks_like_datetime(s: pd.Series) -> bool:
    """Text whose every value is an ISO 8601 date or date and time."""
    if not (pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)):
        return False
    sample = s.dropna().astype(str).head(200)
    if sample.empty:
        return False
    from shipway.contract.validate import is_datetime

    return all(is_datetime(v) for v in sample)


@dataclass(frozen=True)
class Roles:
    """Fields ``init`` was told (or decided) are ids, metadata or features."""

    ids: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()
    features: tuple[str, ...] = ()


def infer_contract(
    frame: pd.DataFrame, range_margin: float = 0.1, roles: Roles | None = None
) -> ContractSpec:
    """A contract that the whole of ``frame`` satisfies. Columns that look like row ids become
    ``role: id``, ISO 8601 text becomes ``type: datetime, role: metadata``, unless ``roles``
    says otherwise."""
    roles = roles or Roles()
    fields = []
    for c in frame.columns:
        name, s = str(c), frame[c]
        forced = name in roles.features
        if looks_like_datetime(s) and not forced:
            f = InputField(
                name=name, type="datetime", nullable=bool(s.isna().any()), role="metadata"
            )
        else:
            f = infer_field(name, s, range_margin)
        if name in roles.ids or (
            not forced
            and name not in roles.metadata
            and f.role == "feature"
            and looks_like_id(name, s)
        ):
            f = f.model_copy(
                update={
                    "role": "id",
                    "values": None,
                    "min": None,
                    "max": None,
                    "type": "int" if f.type in ("int", "float") else "string",
                }
            )
        elif name in roles.metadata:
            f = f.model_copy(update={"role": "metadata"})
        elif forced:
            f = f.model_copy(update={"role": "feature"})
        fields.append(f)
    return ContractSpec(inputs=fields)


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


__all__ = [
    "MAX_CATEGORIES",
    "Roles",
    "column_stats",
    "infer_contract",
    "infer_field",
    "looks_like_datetime",
    "looks_like_id",
]

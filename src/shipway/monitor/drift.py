"""Data drift: a two-sample test AND an effect size per feature; alerts need both.

Numeric features: two-sample Kolmogorov-Smirnov (statistic and asymptotic p-value, as SciPy's
``ks_2samp(method="asymp")``), the Wasserstein-1 distance divided by the reference standard
deviation, and PSI over the reference's decile bins. Categorical features: the two-sample
contingency chi-square (reference counts are a sample too, so the test is of homogeneity, as
``scipy.stats.chi2_contingency(correction=False)``; a goodness-of-fit test that took the
reference shares as exact would fire far too often), the Jensen-Shannon distance (base 2, in
[0, 1]) and PSI. p-values are corrected for the number of features (Benjamini-Hochberg).

A feature drifts when its corrected p-value is below ``alpha`` AND its effect size reaches its
floor: Wasserstein/std for numbers (default 0.1), Jensen-Shannon for categories (default 0.05).
Floors can be set per feature, or calibrated from chunks of the reference itself.

The reference side is prepared once (:class:`Reference`: sorted values, decile edges, category
counts), so a window costs one sort of the current values and a few binary searches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import special, stats

NUMERIC_FLOOR = 0.1
CATEGORY_FLOOR = 0.05
PSI_EPS = 1e-4


@dataclass
class NumericRef:
    sorted: np.ndarray
    std: float
    edges: np.ndarray
    shares: np.ndarray


@dataclass
class CategoryRef:
    levels: list[Any]
    counts: np.ndarray


def prepare_numeric(values: Any) -> NumericRef:
    x = _floats(values)
    x = np.sort(x[np.isfinite(x)])
    n = len(x)
    edges = np.unique(np.quantile(x, np.linspace(0.1, 0.9, 9))) if n else np.array([])
    counts = np.diff(np.concatenate(([0], np.searchsorted(x, edges, "right"), [n])))
    return NumericRef(
        sorted=x,
        std=float(np.std(x)) if n else 0.0,
        edges=edges,
        shares=counts / max(n, 1),
    )


def _value_counts(values: Any) -> tuple[list[str], np.ndarray]:
    """Levels (as text) and their counts; hash-based in Arrow, nulls left out."""
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    vc = pc.value_counts(arr)
    levels = vc.field("values").to_pylist()
    counts = vc.field("counts").to_numpy().astype(np.float64)
    keep = [i for i, v in enumerate(levels) if v is not None]
    return [levels[i] for i in keep], counts[keep]


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return np.asarray(values, dtype=np.float64)


def prepare_category(values: Any) -> CategoryRef:
    levels, counts = _value_counts(values)
    return CategoryRef(levels, counts)


def psi(ref_shares: np.ndarray, cur_shares: np.ndarray) -> float:
    r = np.clip(ref_shares, PSI_EPS, None)
    c = np.clip(cur_shares, PSI_EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_asymp(d: float, n: int, m: int) -> float:
    """SciPy's asymptotic two-sample KS p-value."""
    en = m * n / (m + n)
    return float(stats.kstwo.sf(d, np.round(en)))


def numeric_drift(ref: NumericRef, current: Any) -> dict[str, Any]:
    cur = _floats(current)
    cur = np.sort(cur[np.isfinite(cur)])
    n, m = len(ref.sorted), len(cur)
    if n == 0 or m == 0:
        return {"kind": "numeric", "n": m, "p_value": None, "effect": None}
    # KS: the largest gap between the two empirical CDFs. Both are step functions, so the
    # gap peaks at a current value (right limits) or just before one (left limits): one
    # binary search of the current values into the sorted reference covers every point.
    ref_s = ref.sorted
    ir = np.searchsorted(ref_s, cur, "right")
    hit = ref_s[np.maximum(ir - 1, 0)] == cur
    il = np.searchsorted(ref_s, cur, "left") if bool(np.any(hit & (ir > 0))) else ir
    if m > 1 and bool(np.any(cur[1:] == cur[:-1])):  # ties within the current window
        fc = np.searchsorted(cur, cur, "right") / m
        fc_before = np.searchsorted(cur, cur, "left") / m
    else:
        fc = np.arange(1, m + 1) / m
        fc_before = np.arange(0, m) / m
    d = max(float(np.max(np.abs(ir / n - fc))), float(np.max(np.abs(il / n - fc_before))))
    # Wasserstein-1 as the area between the quantile functions
    if n == m:
        w = float(np.mean(np.abs(ref.sorted - cur)))
    else:
        u = np.concatenate((np.arange(1, n + 1) / n, np.arange(1, m + 1) / m))
        u.sort(kind="stable")
        u = np.unique(u)
        du = np.diff(np.concatenate(([0.0], u)))
        qr = ref.sorted[np.minimum(np.ceil(u * n - 1e-12).astype(np.int64) - 1, n - 1)]
        qc = cur[np.minimum(np.ceil(u * m - 1e-12).astype(np.int64) - 1, m - 1)]
        w = float(np.sum(np.abs(qr - qc) * du))
    counts = np.diff(np.concatenate(([0], np.searchsorted(cur, ref.edges, "right"), [m])))
    w_norm = w / ref.std if ref.std > 0 else (0.0 if w == 0 else math.inf)
    return {
        "kind": "numeric",
        "n": m,
        "ks": d,
        "p_value": ks_asymp(d, n, m),
        "wasserstein": w,
        "wasserstein_norm": w_norm,
        "psi": psi(ref.shares, counts / m),
        "effect": w_norm,
        "effect_name": "wasserstein_norm",
        "current_mean": float(np.mean(cur)),
    }


def category_drift(ref: CategoryRef, current: Any) -> dict[str, Any]:
    cur_list, cur_counts = _value_counts(current)
    m = int(cur_counts.sum())
    if m == 0 or ref.counts.sum() == 0:
        return {"kind": "category", "n": m, "p_value": None, "effect": None}
    levels = sorted(set(ref.levels) | set(cur_list))
    pos = {v: i for i, v in enumerate(levels)}
    r = np.zeros(len(levels))
    c = np.zeros(len(levels))
    r[[pos[v] for v in ref.levels]] = ref.counts
    c[[pos[v] for v in cur_list]] = cur_counts
    table = np.vstack([r, c])
    keep = table.sum(axis=0) > 0
    table = table[:, keep]
    if table.shape[1] < 2:
        chi2, p = 0.0, 1.0
    else:
        expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True)
        expected /= table.sum()
        chi2 = float(np.sum((table - expected) ** 2 / expected))
        p = float(stats.chi2.sf(chi2, table.shape[1] - 1))
    pr, pc = r / r.sum(), c / c.sum()
    mix = 0.5 * (pr + pc)
    js = float(
        np.sqrt(
            max(
                0.0,
                0.5 * np.sum(special.rel_entr(pr, mix)) + 0.5 * np.sum(special.rel_entr(pc, mix)),
            )
            / math.log(2)
        )
    )
    known = set(ref.levels)
    new = [v for v in cur_list if v not in known]
    return {
        "kind": "category",
        "n": m,
        "chi2": chi2,
        "p_value": p,
        "jensen_shannon": js,
        "psi": psi(pr, pc),
        "effect": js,
        "effect_name": "jensen_shannon",
        "unseen_levels": new[:20],
    }


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Adjusted p-values (step-up), in the input order; None stays None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    if not idx:
        return list(pvalues)
    ps = np.array([pvalues[i] for i in idx], dtype=np.float64)
    k = len(ps)
    order = np.argsort(ps)
    ranked = ps[order] * k / np.arange(1, k + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.minimum(adjusted, 1.0)
    out: list[float | None] = list(pvalues)
    for j, o in enumerate(order):
        out[idx[o]] = float(adjusted[j])
    return out


@dataclass
class Reference:
    """The reference side of every feature, prepared once."""

    numeric: dict[str, NumericRef] = field(default_factory=dict)
    category: dict[str, CategoryRef] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, columns: Mapping[str, Any], kinds: Mapping[str, str]) -> Reference:
        ref = cls()
        for name, values in columns.items():
            if kinds[name] in ("int", "float"):
                ref.numeric[name] = prepare_numeric(values)
            else:
                ref.category[name] = prepare_category(values)
        return ref

    def features(self) -> list[str]:
        return [*self.numeric, *self.category]

    def floor(self, name: str) -> float:
        if name in self.floors:
            return self.floors[name]
        return NUMERIC_FLOOR if name in self.numeric else CATEGORY_FLOOR


def calibrate_floors(
    columns: Mapping[str, Any], kinds: Mapping[str, str], chunks: int = 8, margin: float = 2.0
) -> dict[str, float]:
    """Floors from the reference itself: ``margin`` times the largest effect size seen between
    one chunk of the reference and the rest, never below the defaults."""
    out = {}
    for name, values in columns.items():
        arr = np.asarray(values, dtype=object)
        parts = np.array_split(np.arange(len(arr)), chunks)
        worst = 0.0
        for part in parts:
            rest = np.setdiff1d(np.arange(len(arr)), part)
            if kinds[name] in ("int", "float"):
                ref_part = prepare_numeric(arr[rest].astype(float))
                res = numeric_drift(ref_part, arr[part].astype(float))
            else:
                res = category_drift(prepare_category(arr[rest].tolist()), arr[part].tolist())
            worst = max(worst, res.get("effect") or 0.0)
        default = NUMERIC_FLOOR if kinds[name] in ("int", "float") else CATEGORY_FLOOR
        out[name] = max(default, margin * worst)
    return out


def drift_report(ref: Reference, current: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """Every feature's test and effect, BH-corrected p-values, verdicts and the drift share."""
    jobs: list[tuple[str, Any, Any]] = []
    for name, r in ref.numeric.items():
        if name in current:
            jobs.append((name, numeric_drift, r))
    for name, c in ref.category.items():
        if name in current:
            jobs.append((name, category_drift, c))
    # NumPy's sorts and searches release the GIL: features are computed on every core.
    workers = min(len(jobs), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda j: j[1](j[2], current[j[0]]), jobs))
    features = {j[0]: res for j, res in zip(jobs, done, strict=True)}
    names = list(features)
    adjusted = benjamini_hochberg([features[n]["p_value"] for n in names])
    drifted = []
    for name, p_adj in zip(names, adjusted, strict=True):
        f = features[name]
        f["p_adjusted"] = p_adj
        f["floor"] = ref.floor(name)
        effect = f.get("effect")
        f["significant"] = p_adj is not None and p_adj < alpha
        f["large"] = effect is not None and effect >= f["floor"]
        f["drifted"] = bool(f["significant"] and f["large"])
        if f["drifted"]:
            drifted.append(name)
    return {
        "features": features,
        "drifted": drifted,
        "drift_share": len(drifted) / len(names) if names else 0.0,
        "alpha": alpha,
    }


__all__ = [
    "CATEGORY_FLOOR",
    "NUMERIC_FLOOR",
    "Reference",
    "benjamini_hochberg",
    "calibrate_floors",
    "category_drift",
    "drift_report",
    "ks_asymp",
    "numeric_drift",
    "prepare_category",
    "prepare_numeric",
    "psi",
]

"""Contract validation speed: 1,000,000 rows x 20 columns, bad rows included, on one core.

    python bench/contract.py [--rows 1000000] [--bad 0.01] [--repeat 3]

The table is generated here (seeded): 14 float columns, 3 int columns, 2 category columns and
1 bool column, as a pilot's tabular data usually looks. A share of rows (``--bad``, default 1%)
is broken on purpose: out-of-range numbers, nulls in non-nullable fields, non-integral values
in int fields and unseen categories, spread over all columns.

In one run it times:

  (a) ``Contract.validate_table``: every rule of the contract, the good rows cast and split off,
      and each bad row explained (field, rule, value, expected), as ingestion uses it;
  (b) a bare PyArrow baseline: the same range, null, integrality and category checks as
      pyarrow.compute kernels OR-ed into one mask, then the good rows filtered; no explanation;
  (c) a pandas baseline written the way a pilot's notebook does it (``df[col].between`` and
      ``isin`` masks), as a reference point of a common approach.

Arrow and NumPy are held to one thread, so the figures are per core. Prints rows per second
for each and the ratios (a)/(b) and (a)/(c). Nothing is asserted; the issue's target is (a)
under 0.3 s for 1,000,000 x 20.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shipway.contract import Contract
from shipway.manifest import ContractSpec, InputField

N_FLOAT, N_INT, N_CAT, N_BOOL = 14, 3, 2, 1
CATS = ["north", "south", "east", "west", "centre"]


def build(rows: int, bad_share: float, seed: int = 7) -> tuple[pa.Table, ContractSpec, int]:
    """A table, its contract, and how many rows were broken on purpose."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {}
    fields: list[InputField] = []
    n_bad = int(rows * bad_share)
    bad_rows = rng.choice(rows, size=n_bad, replace=False)
    # each broken row gets one problem, in one column chosen at random
    which = rng.integers(0, N_FLOAT + N_INT + N_CAT + N_BOOL, size=n_bad)
    c = 0
    for i in range(N_FLOAT):
        x = rng.normal(50.0, 10.0, rows)
        valid = np.ones(rows, dtype=bool)
        hit = bad_rows[which == c]
        half = len(hit) // 2
        x[hit[:half]] = 1e6  # out of range
        valid[hit[half:]] = False  # null in a non-nullable field
        cols[f"f{i}"] = pa.array(x, mask=~valid)
        fields.append(InputField(name=f"f{i}", type="float", min=-100.0, max=200.0))
        c += 1
    for i in range(N_INT):
        x = rng.integers(0, 100, rows).astype(np.float64)
        hit = bad_rows[which == c]
        half = len(hit) // 2
        x[hit[:half]] = 1000.0  # out of range
        x[hit[half:]] = 1.5  # not an integer
        cols[f"i{i}"] = pa.array(x)
        fields.append(InputField(name=f"i{i}", type="int", min=0, max=120))
        c += 1
    for i in range(N_CAT):
        idx = rng.integers(0, len(CATS), rows)
        values = np.array(CATS, dtype=object)[idx]
        values[bad_rows[which == c]] = "atlantis"  # unseen category
        cols[f"c{i}"] = pa.array(values, type=pa.string())
        fields.append(InputField(name=f"c{i}", type="category", values=list(CATS)))
        c += 1
    for i in range(N_BOOL):
        b = rng.random(rows) < 0.3
        valid = np.ones(rows, dtype=bool)
        valid[bad_rows[which == c]] = False
        cols[f"b{i}"] = pa.array(b, mask=~valid)
        fields.append(InputField(name=f"b{i}", type="bool"))
        c += 1
    return pa.table(cols), ContractSpec(inputs=fields), n_bad


def arrow_baseline(table: pa.Table, spec: ContractSpec) -> tuple[pa.Table, int]:
    mask = None
    for f in spec.inputs:
        col = table.column(f.name)
        parts = [pc.is_null(col)]
        if f.type in ("int", "float"):
            if f.min is not None:
                parts.append(pc.fill_null(pc.less(col, f.min), False))
            if f.max is not None:
                parts.append(pc.fill_null(pc.greater(col, f.max), False))
            if f.type == "int":
                parts.append(pc.fill_null(pc.not_equal(col, pc.floor(col)), False))
        elif f.type == "category":
            parts.append(pc.invert(pc.fill_null(pc.is_in(col, pa.array(f.values)), True)))
        for p in parts:
            mask = p if mask is None else pc.or_(mask, p)
    good = table.filter(pc.invert(mask))
    return good, table.num_rows - good.num_rows


def pandas_baseline(frame: pd.DataFrame, spec: ContractSpec) -> tuple[pd.DataFrame, int]:
    bad = np.zeros(len(frame), dtype=bool)
    for f in spec.inputs:
        s = frame[f.name]
        bad |= s.isna().to_numpy()
        if f.type in ("int", "float"):
            bad |= ~s.between(f.min, f.max).to_numpy()
            if f.type == "int":
                bad |= (s.fillna(0) % 1 != 0).to_numpy()
        elif f.type == "category":
            bad |= ~s.isin(f.values).to_numpy()
    return frame[~bad], int(bad.sum())


def best_of(repeat: int, fn, *args):  # type: ignore[no-untyped-def]
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bad", type=float, default=0.01, help="share of rows broken on purpose")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs each")
    a = ap.parse_args(argv)

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    t0 = time.perf_counter()
    table, spec, n_bad = build(a.rows, a.bad)
    contract = Contract(spec)
    frame = table.to_pandas()
    print(
        f"table: {a.rows:,} rows x {table.num_columns} columns, {n_bad:,} rows broken on "
        f"purpose (built in {time.perf_counter() - t0:.1f} s); one Arrow thread"
    )

    t_ship, res = best_of(a.repeat, contract.validate_table, table)
    t_arrow, (_, arrow_bad) = best_of(a.repeat, arrow_baseline, table, spec)
    t_pd, (_, pd_bad) = best_of(a.repeat, pandas_baseline, frame, spec)
    reasons = sum(len(r) for r in res.reasons)
    rules: dict[str, int] = {}
    for rs in res.reasons:
        for v in rs:
            rules[v["rule"]] = rules.get(v["rule"], 0) + 1

    rows = a.rows
    print()
    print(f"{'':38} {'seconds':>8} {'rows/s':>14} {'bad rows':>9}")
    print(
        f"{'(a) Contract.validate_table':38} {t_ship:8.3f} {rows / t_ship:14,.0f} "
        f"{res.bad_count:9,}"
    )
    print(
        f"{'(b) bare pyarrow.compute mask':38} {t_arrow:8.3f} {rows / t_arrow:14,.0f} "
        f"{arrow_bad:9,}"
    )
    print(f"{'(c) pandas masks':38} {t_pd:8.3f} {rows / t_pd:14,.0f} {pd_bad:9,}")
    print()
    print(
        f"(a) explained {reasons:,} violations: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(rules.items()))
    )
    print(f"ratio time (a)/(b): {t_ship / t_arrow:.2f}   (a)/(c): {t_ship / t_pd:.2f}")
    print(
        f"target: (a) under 0.3 s for 1,000,000 x 20 -> {t_ship:.3f} s "
        f"({'met' if t_ship < 0.3 else 'NOT met'} at {rows:,} rows)"
    )
    if res.bad_count != n_bad or arrow_bad != n_bad or pd_bad != n_bad:
        print("warning: the three methods disagree on the bad-row count", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

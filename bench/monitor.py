"""The drift report at scale: 1,000,000 reference rows against 1,000,000 current rows, 20 features.

    python bench/monitor.py [--rows 1000000] [--no-scipy]

Data (generated, seeded): 15 numeric and 5 categorical features. Unshifted columns of the
current frame come from the same distribution as the reference with another seed; 3 numeric
columns are shifted by 0.25 reference standard deviations and 1 categorical column has 10
points of probability moved between two levels.

In one run it measures:

  (a) Shipway's full drift report (KS statistic and p-value, Wasserstein/std and PSI for
      numbers; contingency chi-square, Jensen-Shannon and PSI for categories; BH correction;
      verdicts), with the reference prepared beforehand (as a running service holds it);
  (b) the same statistics computed per column with plain SciPy calls (ks_2samp,
      wasserstein_distance, chi2_contingency, jensenshannon) as the baseline;
  (c) Evidently's DataDriftPreset on the same frames, when Evidently is installed.

It prints the times and the ratio (b)/(a), the largest difference between the values (a) and
(b) both compute, and which features each approach flags: Shipway's verdicts (significant
after BH AND an effect above its floor) against plain "p < 0.05" on KS and chi-square.
No figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from scipy.spatial.distance import jensenshannon

from shipway.monitor.drift import Reference, drift_report

N_NUM, N_CAT = 15, 5
SHIFTED_NUM = ("num_0", "num_1", "num_2")
SHIFTED_CAT = "cat_0"
LEVELS = ["a", "b", "c", "d", "e"]
P_REF = [0.30, 0.25, 0.20, 0.15, 0.10]
P_SHIFT = [0.40, 0.15, 0.20, 0.15, 0.10]  # 10 points moved from b to a


def frames(rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    ref_rng, cur_rng = np.random.default_rng(1), np.random.default_rng(2)
    ref, cur, kinds = {}, {}, {}
    for i in range(N_NUM):
        name = f"num_{i}"
        loc, scale = ref_rng.uniform(-5, 5), ref_rng.uniform(0.5, 3)
        ref[name] = ref_rng.normal(loc, scale, rows)
        shift = 0.25 * scale if name in SHIFTED_NUM else 0.0
        cur[name] = cur_rng.normal(loc + shift, scale, rows)
        kinds[name] = "float"
    for i in range(N_CAT):
        name = f"cat_{i}"
        ref[name] = np.asarray(LEVELS, dtype=object)[ref_rng.choice(5, rows, p=P_REF)]
        p = P_SHIFT if name == SHIFTED_CAT else P_REF
        cur[name] = np.asarray(LEVELS, dtype=object)[cur_rng.choice(5, rows, p=p)]
        kinds[name] = "category"
    return ref, cur, kinds


def scipy_report(
    ref: dict[str, np.ndarray], cur: dict[str, np.ndarray], kinds: dict[str, str]
) -> dict[str, dict[str, float]]:
    out = {}
    for name, kind in kinds.items():
        a, b = ref[name], cur[name]
        if kind == "float":
            ks = stats.ks_2samp(a, b, method="asymp")
            w = stats.wasserstein_distance(a, b)
            out[name] = {
                "ks": ks.statistic,
                "p_value": ks.pvalue,
                "wasserstein": w,
                "wasserstein_norm": w / np.std(a),
            }
        else:
            levels = sorted(set(LEVELS))
            table = np.array([[np.sum(a == v) for v in levels], [np.sum(b == v) for v in levels]])
            chi = stats.chi2_contingency(table, correction=False)
            js = jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum(), base=2)
            out[name] = {"chi2": chi.statistic, "p_value": chi.pvalue, "jensen_shannon": js}
    return out


EVIDENTLY_CHILD = r"""
import json, resource, sys, time
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref = pd.read_parquet(sys.argv[1]); cur = pd.read_parquet(sys.argv[2])
t0 = time.perf_counter()
snap = Report([DataDriftPreset()]).run(cur, ref)
seconds = time.perf_counter() - t0
values, drifted = {}, []
for m in snap.dict()["metrics"]:
    cfg = m["config"]
    if "column" in cfg and "method" in cfg:
        values[cfg["column"]] = [cfg["method"], float(m["value"])]
        if float(m["value"]) >= cfg["threshold"]:
            drifted.append(cfg["column"])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "values": values, "drifted": drifted, "max_rss_mb": rss}))
"""


def evidently_python() -> str | None:
    venv = Path(__file__).resolve().parent / ".venv-evidently" / "bin" / "python"
    if venv.exists():
        return str(venv)
    try:
        import evidently  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def run_evidently(
    python: str, ref: dict[str, np.ndarray], cur: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Evidently in its own interpreter (its pandas pin clashes with Shipway's)."""
    with tempfile.TemporaryDirectory(prefix="shipway-bench-ev-") as tmp:
        paths = []
        for name, frame in (("ref", ref), ("cur", cur)):
            path = Path(tmp) / f"{name}.parquet"
            pq.write_table(pa.table({k: pa.array(v) for k, v in frame.items()}), path)
            paths.append(str(path))
        out = subprocess.run(
            [python, "-c", EVIDENTLY_CHILD, *paths],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--no-scipy", action="store_true", help="skip the SciPy baseline")
    a = ap.parse_args()
    t0 = time.perf_counter()
    ref, cur, kinds = frames(a.rows)
    print(
        f"{a.rows:,} reference rows vs {a.rows:,} current rows, {N_NUM} numeric + {N_CAT} "
        f"categorical features (generated in {time.perf_counter() - t0:.1f} s), "
        f"{os.cpu_count()} cores"
    )
    shifted = sorted([*SHIFTED_NUM, SHIFTED_CAT])
    print(f"shifted on purpose: {', '.join(shifted)}")

    ref_arrow = {k: pa.array(v) for k, v in ref.items()}
    cur_arrow = {k: pa.array(v) for k, v in cur.items()}
    t0 = time.perf_counter()
    reference = Reference.build(ref_arrow, kinds)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = drift_report(reference, cur_arrow)
    t_ship = time.perf_counter() - t0
    print(
        f"\n(a) Shipway drift report            {t_ship:7.2f} s   (reference prepared once "
        f"beforehand in {t_prep:.2f} s; target under 2 s)"
    )

    if not a.no_scipy:
        t0 = time.perf_counter()
        base = scipy_report(ref, cur, kinds)
        t_scipy = time.perf_counter() - t0
        print(
            f"(b) plain SciPy per column          {t_scipy:7.2f} s   ratio (b)/(a) "
            f"{t_scipy / t_ship:.1f}x"
        )
        worst = 0.0
        for name, vals in base.items():
            mine = report["features"][name]
            for k, v in vals.items():
                worst = max(worst, abs(float(mine[k]) - float(v)))
        print(f"    largest difference between (a) and (b) on shared values: {worst:.2e}")
        plain = sorted(n for n, v in base.items() if v["p_value"] < 0.05)
        print(f"    plain p < 0.05 flags {len(plain)}: {', '.join(plain)}")
    python = evidently_python()
    if python is None:
        print(
            "(c) Evidently is not installed (a bench extra; it needs pandas < 3): skipped "
            "(see bench/README.md)"
        )
    else:
        ev = run_evidently(python, ref, cur)
        print(
            f"(c) Evidently DataDriftPreset       {ev['seconds']:7.2f} s   ratio (c)/(a) "
            f"{ev['seconds'] / t_ship:.1f}x   (peak memory {ev['max_rss_mb']:.0f} MB)"
        )
        worst = 0.0
        for name, (method, value) in ev["values"].items():
            mine = report["features"][name]
            ours = (
                mine["wasserstein_norm"]
                if "Wasserstein" in method
                else mine["jensen_shannon"] * math.sqrt(math.log(2))
            )  # natural-log JS
            worst = max(worst, abs(ours - value))
        print(
            f"    largest difference between (a) and (c) on shared values: {worst:.2e} "
            "(normalised Wasserstein; Jensen-Shannon in natural-log units)"
        )
        print(
            f"    Evidently's default verdicts flag {len(ev['drifted'])}: "
            f"{', '.join(sorted(ev['drifted']))}"
        )

    flagged = sorted(report["drifted"])
    print(
        f"\nShipway flags {len(flagged)}: {', '.join(flagged)}  "
        f"({'exactly the shifted ones' if flagged == shifted else 'NOT the shifted set'})"
    )
    for name in shifted:
        f = report["features"][name]
        print(
            f"    {name}: effect {f['effect']:.4f} (floor {f['floor']}), p (BH) "
            f"{f['p_adjusted']:.2e}"
        )
    return 0 if flagged == shifted else 1


if __name__ == "__main__":
    sys.exit(main())

"""The data quality report (``shipway data report SOURCE``): a source's live data measured
against the pilot's, column by column, before launch. A real pilot, a real ``shipway init``
and real files; the command runs in-process through Typer's runner."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import typer
import yaml
from scipy import stats
from typer.testing import CliRunner

from shipway.cli import app as shipway_app
from shipway.cli.data_report import register
from shipway.data.report import HIDDEN, quality_report
from shipway.manifest import ContractSpec
from shipway.monitor.drift import Reference
from tests.pilots.churn import generate, write

ENV = {"SHIPWAY_DATABASE_URL": "", "SHIPWAY_API_KEY": None, "SHIPWAY_DEV_MODE": None}
SCRIPT = "<script>alert(1)</script>"


def _cli() -> typer.Typer:
    """An app with only this command, as ``shipway`` has it once registered."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """The test's root."""

    register(app)
    return app


def _report(*args: str) -> Any:
    return CliRunner().invoke(_cli(), ["data", "report", *args], env=ENV)


def _drop(path: Path, frame: pd.DataFrame, age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    then = time.time() - age_s
    os.utime(path, (then, then))


def _messy(n: int = 400) -> pd.DataFrame:
    """Live rows messier than the pilot's: tenure shifted up (inside the contract's range),
    monthly charges 30% missing (the pilot: about 8%) and 2% over the maximum, and new
    contract categories, one of them markup."""
    live = generate(n, seed=31).drop(columns=["churn"])
    rng = np.random.default_rng(5)
    live["tenure_months"] = rng.integers(50, 79, n)
    live["monthly_charges"] = rng.normal(70, 20, n).clip(18, 120).round(2)
    live.loc[: int(n * 0.3) - 1, "monthly_charges"] = np.nan  # rows 0..119
    live.loc[120:127, "monthly_charges"] = 150.0  # the contract's max is about 130
    live.loc[200:219, "contract"] = "weekly"
    live.loc[220:221, "contract"] = SCRIPT
    live["region"] = "north"  # a column the contract does not have
    return live


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("report")
    data, model = write(folder, n=1500)
    init = ["init", "--model", str(model), "--data", str(data), "--target", "churn"]
    res = CliRunner().invoke(shipway_app, [*init, "--dir", str(folder / "svc")], env=ENV)
    assert res.exit_code == 0, res.output
    manifest = folder / "svc" / "shipway.yaml"
    spec = yaml.safe_load(manifest.read_text())
    sink = {"path": "scored", "format": "parquet"}
    spec["sources"] = [
        {"name": "nightly", "path": "incoming/*.csv", "sink": sink},
        {
            "name": "archive",
            "path": "archive/*",
            "sink": sink,
            "schema_changes": {"map": {"plan": "contract"}},
        },
        {"name": "empty", "path": "nothing-here/*.csv", "sink": sink},
    ]
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    _drop(folder / "svc" / "incoming" / "live.csv", _messy(), age_s=60)
    _drop(folder / "svc" / "archive" / "old.csv", generate(50, seed=41), age_s=600)
    renamed = generate(30, seed=42).rename(columns={"contract": "plan"})
    _drop(folder / "svc" / "archive" / "new.parquet", renamed, age_s=60)
    return {"manifest": manifest, "pilot": pd.read_csv(data)}


def test_the_report_ranks_the_shifted_column_worst_and_counts_the_mess(
    svc: dict[str, Any], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    res = _report("nightly", "-m", str(svc["manifest"]), "--json", "--html", str(page))
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    cols = {c["name"]: c for c in report["columns"]}

    # the shifted column ranks worst, its drift figure above every other column's
    worst = report["columns"][0]
    assert worst["name"] == "tenure_months" and worst["drifted"]
    others = [c["distance_vs_floor"] for c in report["columns"][1:] if c["distance"] is not None]
    assert others and worst["distance_vs_floor"] > max(others)
    # ... and it is the monitor's own statistic (Wasserstein / reference std, checked on SciPy)
    ref = svc["pilot"]["tenure_months"].to_numpy(float)
    live = _messy()["tenure_months"].to_numpy(float)
    expected = stats.wasserstein_distance(ref, live) / np.std(ref)
    assert worst["distance_name"] == "wasserstein_norm"
    assert worst["distance"] == pytest.approx(expected, rel=1e-9)
    assert cols["customer_id"]["distance"] is None  # ids are never drift-tested
    assert cols["customer_id"]["drift_skipped"] == "id"

    # missing, out of range, unseen categories
    charges = cols["monthly_charges"]
    assert charges["missing_share"] == pytest.approx(0.30)
    assert charges["pilot_missing_share"] == pytest.approx(
        svc["pilot"]["monthly_charges"].isna().mean()
    )
    assert charges["out_of_range_share"] == pytest.approx(8 / 400)
    assert charges["pilot_out_of_range_share"] == 0
    assert cols["contract"]["unseen_values"] == [
        {"value": "weekly", "count": 20},
        {"value": SCRIPT, "count": 2},
    ]
    assert cols["contract"]["unseen_share"] == pytest.approx(22 / 400)
    assert cols["contract"]["pilot_unseen_share"] == 0

    # rows in, and the rows that break the contract, by the validator's rules
    assert (report["rows_in"], report["rows_bad"]) == (400, 30)
    assert report["rules"] == {"category": 22, "max": 8}
    assert report["extra_columns"] == ["region"] and report["absent_columns"] == []
    assert report["files"] == [{"path": "incoming/live.csv", "rows": 400}]

    # one self-contained page: nothing fetched, no script, the markup value escaped
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "<style>" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.index("tenure_months") < text.index("monthly_charges")

    # the terminal: a row per column, worst first
    res = _report("nightly", "-m", str(svc["manifest"]))
    assert res.exit_code == 0, res.output
    assert "30 rows (7.5%) break the contract: category 22, max 8" in res.stdout
    order = [res.stdout.index(f"│ {name} ") for name in ("tenure_months", "contract")]
    assert order == sorted(order)
    assert "weekly (20)" in res.stdout


def test_a_source_of_several_files_the_newest_few_and_clear_errors(svc: dict[str, Any]) -> None:
    m = str(svc["manifest"])
    res = _report("archive", "-m", m, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    # oldest first, a renamed column mapped as the source says, the label column set aside
    assert report["files"] == [
        {"path": "archive/old.csv", "rows": 50},
        {"path": "archive/new.parquet", "rows": 30},
    ]
    assert report["rows_in"] == 80 and report["rows_bad"] == 0
    assert report["absent_columns"] == [] and report["extra_columns"] == ["churn"]

    newest = json.loads(_report("archive", "-m", m, "--json", "--files", "1").stdout)
    assert [f["path"] for f in newest["files"]] == ["archive/new.parquet"]

    res = _report("nope", "-m", m)
    assert res.exit_code == 1
    assert "no source named 'nope'" in res.stderr and "nightly, archive, empty" in res.stderr
    res = _report("empty", "-m", m)
    assert res.exit_code == 1 and "no files match 'nothing-here/*.csv'" in res.stderr


def test_personal_values_are_counted_never_shown() -> None:
    contract = ContractSpec.model_validate(
        {"inputs": [{"name": "plan", "type": "category", "values": ["a", "b"]}]}
    )
    table = pa.table({"plan": ["a", "secret-1", "secret-1", None]})
    report = quality_report(table, contract, Reference(), hidden={"plan"})
    (col,) = report["columns"]
    assert col["unseen_values"] == [{"value": HIDDEN, "count": 2}]
    assert col["missing_share"] == 0.25 and col["drift_skipped"] == "no_reference"
    assert "secret-1" not in json.dumps(report)

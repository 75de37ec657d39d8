"""Data sources, first part: new files taken once, validated as tables, bad rows quarantined
with their reasons, good rows scored through the predict path (each a logged decision, answered
as online) and written whole to a sink; on demand and on a server's schedule."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import run_cli
from tests.pilots.churn import generate, write

SECRET = {"SHIPWAY_SECRET_KEY": "8f1c2e9a7b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"}


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("churn-pilot")
    data, model = write(folder, n=1500)
    return {"data": data, "model": model}


def _service(pilot: dict[str, Path], folder: Path, env: dict[str, str], **source: Any) -> Path:
    res = run_cli(
        "init", "--model", str(pilot["model"]), "--data", str(pilot["data"]),
        "--target", "churn", "--dir", str(folder), env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    manifest = folder / "shipway.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec["monitor"] = {"schedule": False, "alerts": []}
    spec["sources"] = [
        {
            "name": "nightly",
            "path": "incoming/*",
            "sink": {"path": "scored", "format": "parquet"},
            "max_bad_share": {"warn": 0.01, "fail": 0.5},
            **source,
        }
    ]
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / "incoming").mkdir()
    return manifest


def _drop(path: Path, frame: pd.DataFrame, age_s: float = 120.0) -> Path:
    """A file that arrived ``age_s`` ago (settled), in the format its name says."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _run(manifest: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    res = run_cli("sources", "run", "nightly", "-m", str(manifest), "--json", env=env)
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout)


def test_new_files_are_validated_quarantined_scored_and_written_once(
    pilot: dict[str, Path], tmp_path: Path, start_server: Any, database_url: str
) -> None:
    env = {"SHIPWAY_DATABASE_URL": database_url, **SECRET}
    manifest = _service(pilot, tmp_path / "svc", env, settle_s=60)
    incoming = tmp_path / "svc" / "incoming"
    first = generate(50, seed=21)  # still carries the churn column: not the model's, ignored
    _drop(incoming / "a.csv", first)
    second = generate(40, seed=22).drop(columns=["churn"])
    second.loc[[3, 17], "contract"] = "weekly"  # a category the pilot never had
    second.loc[25, "tenure_months"] = -40  # out of range
    _drop(incoming / "b.parquet", second)

    code, run = _run(manifest, env)
    assert code == 0 and run["status"] == "warn", run  # bad rows above the warn share
    files = {Path(f["path"]).name: f for f in run["files"]}
    assert (files["a.csv"]["status"], files["a.csv"]["rows_good"]) == ("scored", 50)
    assert files["a.csv"]["ignored_columns"] == ["churn"]
    assert (files["b.parquet"]["rows_good"], files["b.parquet"]["rows_bad"]) == (37, 3)

    held = json.loads(run_cli("quarantine", "list", "-m", str(manifest), "--json", env=env).stdout)
    assert sorted(h["row_index"] for h in held) == [3, 17, 25]
    rules = {h["row_index"]: [v["rule"] for v in h["violations"]] for h in held}
    assert rules[3] == ["category"] and rules[25] == ["min"]
    assert all(h["file"] == "incoming/b.parquet" for h in held)

    # the sink holds every good row's answer, the same as online /v1/predict gives
    sink = pq.read_table(tmp_path / "svc" / files["b.parquet"]["sink"]).to_pandas()
    assert len(sink) == 37 and set(sink["route"]) == {"champion"}
    server = start_server(manifest, env)
    rows = sink.drop(
        columns=["decision_id", "output", "confidence", "model_version", "route"]
    ).to_dict("records")
    rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and v != v)} for r in rows]
    online = server.client.post("/v1/predict", json={"inputs": rows}).json()["decisions"]
    assert [d["output"] for d in online] == list(sink["output"])
    assert [d["confidence"] for d in online] == pytest.approx(list(sink["confidence"]))
    logged = server.client.get(f"/v1/decisions/{sink['decision_id'][0]}").json()
    assert logged["caller"] == "source:nightly"

    # taken once: nothing new on the next run; a file still being written waits
    code, again = _run(manifest, env)
    assert code == 0 and again["files"] == []
    _drop(incoming / "c.jsonl", generate(5, seed=23).drop(columns=["churn"]), age_s=0)
    code, again = _run(manifest, env)
    assert again["files"] == [] and [Path(p).name for p in again["waiting"]] == ["c.jsonl"]
    then = time.time() - 120
    os.utime(incoming / "c.jsonl", (then, then))
    code, again = _run(manifest, env)
    assert [(Path(f["path"]).name, f["rows_good"]) for f in again["files"]] == [("c.jsonl", 5)]
    status = json.loads(run_cli("sources", "status", "-m", str(manifest), "--json", env=env).stdout)
    assert [r["status"] for r in status][:4] == ["ok", "ok", "ok", "warn"]
    assert sum(r["rows_good"] for r in status) == 50 + 37 + 5


def test_a_bad_batch_is_held_whole_and_an_unreadable_file_fails_alone(
    pilot: dict[str, Path], tmp_path: Path
) -> None:
    env = {"SHIPWAY_DATABASE_URL": "", **SECRET}
    manifest = _service(pilot, tmp_path / "svc", env)
    incoming = tmp_path / "svc" / "incoming"
    bad = generate(10, seed=24).drop(columns=["churn"])
    bad.loc[:5, "contract"] = "weekly"  # 6 of 10 rows break the contract, over fail: 50%
    _drop(incoming / "bad.csv", bad)
    (incoming / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    then = time.time() - 30
    os.utime(incoming / "broken.parquet", (then, then))
    renamed = generate(8, seed=25).drop(columns=["churn"]).rename(columns={"contract": "plan"})
    _drop(incoming / "renamed.csv", renamed)
    quoted = generate(4, seed=28).drop(columns=["churn"]).to_csv(index=False)
    (incoming / "quote.csv").write_text(quoted.replace("monthly", '"monthly', 1))  # unclosed
    os.utime(incoming / "quote.csv", (then, then))

    code, run = _run(manifest, env)
    assert code == 1 and run["status"] == "failed"
    files = {Path(f["path"]).name: f for f in run["files"]}
    assert files["bad.csv"]["status"] == "held" and files["bad.csv"]["sink"] is None
    assert "6 of 10 rows" in files["bad.csv"]["error"]
    assert files["broken.parquet"]["status"] == "failed"
    assert "broken.parquet cannot be read as parquet" in files["broken.parquet"]["error"]
    assert files["quote.csv"]["status"] == "failed"
    assert "quote.csv cannot be read as csv" in files["quote.csv"]["error"]
    # a renamed column: every row misses a required field, so the file is held, not crashed
    assert files["renamed.csv"]["status"] == "held" and files["renamed.csv"]["rows_bad"] == 8
    assert files["renamed.csv"]["ignored_columns"] == ["plan"]
    assert not (tmp_path / "svc" / "scored").exists() or not list(
        (tmp_path / "svc" / "scored").iterdir()
    )
    held = json.loads(run_cli("quarantine", "list", "-m", str(manifest), "--json", env=env).stdout)
    assert len(held) == 6 + 8
    export = run_cli("decisions", "export", "-m", str(manifest), env=env)
    assert export.stdout.strip() == ""  # nothing was scored


def test_a_server_runs_a_source_on_its_interval(
    pilot: dict[str, Path], tmp_path: Path, start_server: Any
) -> None:
    env = {"SHIPWAY_DATABASE_URL": "", **SECRET}
    manifest = _service(pilot, tmp_path / "svc", env, interval="1s", settle_s=0.5)
    server = start_server(manifest, env)
    _drop(tmp_path / "svc" / "incoming" / "live.csv", generate(20, seed=26), age_s=5)
    scored = tmp_path / "svc" / "scored"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (scored.exists() and list(scored.iterdir())):
        time.sleep(0.3)
    outputs = list(scored.iterdir())
    assert len(outputs) == 1 and outputs[0].suffix == ".parquet"
    answered = pq.read_table(outputs[0]).column("decision_id").to_pylist()
    assert len(answered) == 20
    logged = server.client.get(f"/v1/decisions/{answered[0]}").json()
    assert logged["caller"] == "source:nightly"


def test_a_sink_that_cannot_be_written_fails_its_file_and_a_file_is_taken_once(
    pilot: dict[str, Path], tmp_path: Path
) -> None:
    """A sink that cannot be written fails the file, saying its rows' decisions are logged;
    the file is not scored again; a content already claimed by a run is not taken by another."""
    from shipway.data import ledger
    from shipway.store import open_store

    env = {"SHIPWAY_DATABASE_URL": "", **SECRET}
    manifest = _service(pilot, tmp_path / "svc", env)
    (tmp_path / "svc" / "scored").write_text("a file where the sink folder should be")
    _drop(tmp_path / "svc" / "incoming" / "day.csv", generate(12, seed=27))
    code, run = _run(manifest, env)
    assert code == 1 and run["files"][0]["status"] == "failed"
    assert "all 12 good rows were scored" in run["files"][0]["error"]
    export = run_cli("decisions", "export", "-m", str(manifest), env=env)
    assert len(export.stdout.splitlines()) == 12
    code, again = _run(manifest, env)
    assert again["files"] == []  # taken: a failed file is not scored twice

    store = open_store(f"sqlite:///{tmp_path / 'svc' / '.shipway' / 'shipway.db'}", tmp_path)
    try:
        claim = {"service": "x", "source": "s", "path": "p", "sha256": "ab" * 32, "size": 1,
                     "claimed_at": 1.0}  # fmt: skip
        assert ledger.reserve(store.engine, run_id="r1", **claim)
        assert not ledger.reserve(store.engine, run_id="r2", **claim)
    finally:
        store.close()


def test_freshness_and_failures_are_monitor_figures_alerts_can_use(
    pilot: dict[str, Path], tmp_path: Path, start_server: Any
) -> None:
    """freshness_s.NAME and ingest_failures.NAME in alert rules (a misspelt source is a
    manifest error), GET /v1/sources with the freshness level and the runs."""
    env = {"SHIPWAY_DATABASE_URL": "", **SECRET}
    manifest = _service(pilot, tmp_path / "svc", env, warn_after="1s", error_after="1h")
    spec = yaml.safe_load(manifest.read_text())
    spec["monitor"]["alerts"] = [
        {"name": "stale", "when": "freshness_s.nightly > 1", "do": ["notify"]},
        {"name": "failing", "when": "ingest_failures.nightly >= 1", "do": ["notify"]},
    ]
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp_path / "svc" / "incoming" / "broken.parquet").write_bytes(b"not parquet")
    then = time.time() - 120
    os.utime(tmp_path / "svc" / "incoming" / "broken.parquet", (then, then))
    _drop(tmp_path / "svc" / "incoming" / "good.csv", generate(6, seed=28))
    code, run = _run(manifest, env)
    assert code == 1 and run["status"] == "failed"
    time.sleep(1.5)  # older than warn_after

    server = start_server(manifest, env)
    window = server.client.post("/v1/monitor/run").json()
    nightly = window["sources"]["nightly"]
    assert nightly["ingest_failures"] == 1 and nightly["freshness"] == "warn"
    assert nightly["freshness_s"] > 1
    fired = {e["rule"] for e in server.client.get("/v1/alerts").json()["events"]}
    assert {"stale", "failing"} <= fired
    listed = server.client.get("/v1/sources").json()["sources"]
    assert listed[0]["name"] == "nightly" and listed[0]["runs"][0]["status"] == "failed"
    taken = {Path(f["path"]).name: f["status"] for f in listed[0]["runs"][0]["files_taken"]}
    assert taken == {"broken.parquet": "failed", "good.csv": "scored"}
    server.stop()

    spec["monitor"]["alerts"][0]["when"] = "freshness_s.nigthly > 1"
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = run_cli("validate", "-m", str(manifest), env=env)
    assert res.returncode == 1 and "did you mean 'freshness_s.nightly'" in res.stderr


def test_files_are_read_as_the_contract_says(tmp_path: Path) -> None:
    """A category of numbers stays numbers in CSV; dates in Parquet become ISO text; JSON lines
    with a number in a text field and a column empty in every row are read, not refused."""
    import pyarrow as pa

    from shipway.contract import Contract
    from shipway.data.files import read_table
    from shipway.manifest import ContractSpec, InputField

    spec = ContractSpec(
        inputs=[
            InputField(name="plan", type="category", values=[1, 2, 3]),
            InputField(name="code", type="string"),
            InputField(name="day", type="datetime"),
            InputField(name="extra", type="int", nullable=True),
        ]
    )
    check = Contract(spec)
    csv = tmp_path / "a.csv"
    csv.write_text("plan,code,day,extra\n2,007,2026-01-02,\n3,010,2026-01-03,\n")
    table = read_table(csv, "csv", spec)
    assert table.column("plan").to_pylist() == [2, 3] and table.column("code")[0].as_py() == "007"
    assert check.validate_table(table).bad_count == 0

    parquet = tmp_path / "b.parquet"
    pq.write_table(
        pa.table(
            {
                "plan": [1],
                "code": ["x"],
                "day": pa.array([pa.scalar(20000, pa.date32()).as_py()]),
                "extra": pa.nulls(1),
            }
        ),
        parquet,
    )
    table = read_table(parquet, "parquet", spec)
    assert table.column("day").to_pylist() == ["2024-10-04"]
    assert check.validate_table(table).bad_count == 0

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        '{"plan": 1, "code": 7, "day": "2026-01-02"}\n'
        '{"plan": 2, "code": "x", "day": "2026-01-03"}\n'
    )
    table = read_table(jsonl, "jsonl", spec)
    assert table.column("code").to_pylist() == ["7", "x"]
    assert check.validate_table(table).bad_count == 0

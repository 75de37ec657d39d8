"""Data sources, second part: SQL sources read by cursor on PostgreSQL and MariaDB, HTTP push
through the ingress, schema changes and quarantine replay, a run killed with SIGKILL taken up
without a row twice or skipped, dataset versions (train) and labels joined as feedback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import edit_sections, run_cli, shipway_cmd
from tests.pilots.churn import fit, generate

SECRET = {"SHIPWAY_SECRET_KEY": "8f1c2e9a7b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"}
ENV = {"SHIPWAY_DATABASE_URL": "", **SECRET}
MARIADB_ENV = "SHIPWAY_TEST_MARIADB_URL"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``shipway init`` of the churn pilot (SQLite store), copied by each test."""
    folder = tmp_path_factory.mktemp("churn-template")
    frame = generate(1500, seed=7)
    frame.to_csv(folder / "churn.csv", index=False)
    import joblib

    joblib.dump(fit(frame), folder / "churn.joblib")
    res = run_cli(
        "init", "--model", str(folder / "churn.joblib"), "--data", str(folder / "churn.csv"),
        "--target", "churn", "--dir", str(folder / "svc"), env=ENV,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    edit_sections(folder / "svc" / "shipway.yaml", monitor={"schedule": False, "alerts": []})
    return folder / "svc"


def _service(template: Path, folder: Path, *sources: dict[str, Any], **sections: Any) -> Path:
    shutil.copytree(template, folder)
    manifest = folder / "shipway.yaml"
    edit_sections(manifest, sources=list(sources), **sections)
    return manifest


def _run(manifest: Path, name: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    res = run_cli("sources", "run", name, "-m", str(manifest), "--json", env={**ENV, **(env or {})})
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout)


def _decisions(manifest: Path) -> list[dict[str, Any]]:
    res = run_cli("decisions", "export", "-m", str(manifest), env=ENV)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def _settled(path: Path) -> Path:
    then = time.time() - 120
    os.utime(path, (then, then))
    return path


# -- SQL sources --------------------------------------------------------------------------------


@pytest.fixture(params=["postgresql", "mariadb"])
def sql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    env = "SHIPWAY_TEST_POSTGRES_URL" if request.param == "postgresql" else MARIADB_ENV
    url = os.environ.get(env)
    if not url:
        pytest.skip(f"no {request.param} configured ({env} is unset)")
    yield url


def _sql_rows(frame: pd.DataFrame, first_id: int, at: list[int]) -> list[dict[str, Any]]:
    """Rows for the events table: an id, a time (several rows share one), the churn inputs."""
    import datetime as dt

    base = dt.datetime(2026, 11, 1, 8, 0, 0)
    out = []
    for k, (rec, second) in enumerate(zip(frame.to_dict("records"), at, strict=True)):
        charges = rec["monthly_charges"]
        out.append(
            {
                "id": first_id + k,
                "ts": base + dt.timedelta(seconds=second),
                "customer_id": int(rec["customer_id"]),
                "signup_date": rec["signup_date"],
                "tenure_months": int(rec["tenure_months"]),
                "contract": rec["contract"],
                "monthly_charges": None if charges != charges else charges,
                "region": "north",
            }
        )
    return out


def test_a_sql_source_takes_new_rows_once_by_cursor_and_key(
    template: Path, tmp_path: Path, sql_url: str
) -> None:
    """Rows inserted between runs are taken once: rows sharing the last cursor value (written
    after the run read it) are neither skipped nor taken twice; a NUMERIC column reads as a
    number; a bad row is quarantined; a missing table and an unreachable database fail the run
    with a clear error."""
    import sqlalchemy as sa

    table = f"events_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(sql_url)
    meta = sa.MetaData()
    events = sa.Table(
        table, meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.DateTime, nullable=False),
        sa.Column("customer_id", sa.Integer), sa.Column("signup_date", sa.String(10)),
        sa.Column("tenure_months", sa.Integer), sa.Column("contract", sa.String(16)),
        sa.Column("monthly_charges", sa.Numeric(8, 2)), sa.Column("region", sa.String(8)),
    )  # fmt: skip
    meta.create_all(engine)
    try:
        frame = generate(60, seed=41).drop(columns=["churn"])
        with engine.begin() as conn:  # 30 rows, five to a second: batches end mid-second
            conn.execute(events.insert(), _sql_rows(frame[:30], 1, [k // 5 for k in range(30)]))
        source = {
            "name": "events", "kind": "sql", "url": "env:EVENTS_URL", "query": table,
            "cursor": "ts", "key": "id", "fetch_rows": 12,
            "sink": {"table": f"{table}_scored", "url": "env:EVENTS_URL"},
            "max_bad_share": {"warn": 0.2, "fail": 0.5},
        }  # fmt: skip
        manifest = _service(template, tmp_path / "svc", source)
        env = {"EVENTS_URL": sql_url}
        code, run = _run(manifest, "events", env)
        assert code == 0, run
        assert [f["rows_good"] for f in run["files"]] == [12, 12, 6]
        assert all(f["schema_changes"][0]["column"] == "id" for f in run["files"])  # new columns

        # more rows: two at the last second already read (5 s), one breaking the contract
        more = _sql_rows(frame[30:40], 31, [5, 5, 6, 6, 7, 7, 8, 8, 9, 9])
        more[4]["contract"] = "weekly"
        with engine.begin() as conn:
            conn.execute(events.insert(), more)
        code, run = _run(manifest, "events", env)
        assert code == 0 and (run["rows_in"], run["rows_good"], run["rows_bad"]) == (10, 9, 1)
        code, run = _run(manifest, "events", env)
        assert code == 0 and run["files"] == []

        logged = _decisions(manifest)
        ids = sorted(int(d["inputs"]["customer_id"]) for d in logged)
        want = sorted(int(r["customer_id"]) for r in _sql_rows(frame[:40], 1, [0] * 40))
        want.remove(more[4]["customer_id"])
        assert ids == want  # every good row once, none skipped
        assert all(isinstance(d["inputs"]["monthly_charges"], float | None) for d in logged)
        held = json.loads(run_cli("quarantine", "list", "-m", str(manifest), "--json",
                                  env=ENV).stdout)  # fmt: skip
        assert [v["rule"] for v in held[0]["violations"]] == ["category"]
        with engine.connect() as conn:  # the answers, in a table beside the source's
            sink = pd.read_sql(sa.text(f"SELECT * FROM {table}_scored"), conn)
        assert len(sink) == 39 and sink["decision_id"].is_unique
        assert set(sink["decision_id"]) == {d["id"] for d in logged}

        # a missing table, an unreachable database: the run fails saying why
        for url, query, words in (
            (sql_url, "no_such_table_here", "the query failed"),
            ("postgresql+psycopg://nobody@127.0.0.1:9/none", table, "the query failed"),
        ):
            edit_sections(manifest, sources=[{**source, "url": url, "query": query}])
            res = run_cli("sources", "run", "events", "-m", str(manifest), env=ENV)
            assert res.returncode == 1 and words in res.stderr, res.stderr
    finally:
        meta.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}_scored"))
        engine.dispose()


# -- a run killed part of the way -----------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_template(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service whose champion takes 30 ms a call, so a run can be killed part of the way."""
    import joblib

    from tests.pilots.slow import Slow

    folder = tmp_path_factory.mktemp("slow-template")
    slow = folder / "slow.joblib"
    joblib.dump(Slow(joblib.load(template.parent / "churn.joblib"), 0.03), slow)
    res = run_cli(
        "init", "--model", str(slow), "--data", str(template.parent / "churn.csv"),
        "--target", "churn", "--dir", str(folder / "svc"), env=ENV,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    edit_sections(folder / "svc" / "shipway.yaml", monitor={"schedule": False, "alerts": []})
    return folder / "svc"


def _count(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        return int(c.execute("select count(*) from decisions").fetchone()[0])


def _kill_part_way(manifest: Path, source: str, env: dict[str, str], at_least: int) -> int:
    """Start ``sources run``, SIGKILL it once ``at_least`` decisions are logged; the count."""
    proc = subprocess.Popen(
        shipway_cmd("sources", "run", source, "-m", str(manifest), "--json"),
        env={**os.environ, **ENV, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    db = manifest.parent / ".shipway" / "shipway.db"
    deadline, logged = time.monotonic() + 60, 0
    while time.monotonic() < deadline and logged < at_least and proc.poll() is None:
        time.sleep(0.05)
        logged = _count(db)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return _count(db)


def test_a_run_killed_mid_file_is_taken_up_with_every_row_scored_once(
    slow_template: Path, tmp_path: Path
) -> None:
    """SIGKILL while a file is being scored; the next run takes up the claim, scores only the
    rows whose decisions are not logged, and writes the whole sink: no row twice, none lost."""
    folder = tmp_path / "svc"
    manifest = _service(slow_template, folder, {
        "name": "big", "path": "incoming/*.csv", "batch_rows": 20,
        "sink": {"path": "scored", "format": "parquet"},
    })  # fmt: skip
    (folder / "incoming").mkdir()
    rows = generate(1200, seed=43).drop(columns=["churn"])
    rows.to_csv(folder / "incoming" / "day.csv", index=False)
    _settled(folder / "incoming" / "day.csv")

    before = _kill_part_way(manifest, "big", {}, 200)
    assert 200 <= before < 1200, before  # killed part of the way

    code, run = _run(manifest, "big")
    assert code == 0, run
    (taken,) = run["files"]
    assert taken["resumed"] and taken["rows_good"] == 1200
    logged_rows = _decisions(manifest)
    assert len(logged_rows) == 1200
    assert sorted(int(d["inputs"]["customer_id"]) for d in logged_rows) == sorted(
        int(c) for c in rows["customer_id"]
    )
    sink = pq.read_table(folder / taken["sink"]).to_pandas()
    assert len(sink) == 1200 and set(sink["decision_id"]) == {d["id"] for d in logged_rows}
    code, run = _run(manifest, "big")
    assert run["files"] == []


def test_a_jetstream_consumer_killed_mid_batch_loses_and_repeats_nothing(
    slow_template: Path, tmp_path: Path
) -> None:
    """Messages are acknowledged only after their rows are committed: a consumer killed mid
    batch has the batch's claim taken up and the redelivered messages skipped, so every row is
    scored once; a message that is not JSON is quarantined, not lost."""
    import asyncio

    url = os.environ.get("SHIPWAY_TEST_NATS_URL")
    if not url:
        pytest.skip("no NATS JetStream configured (SHIPWAY_TEST_NATS_URL is unset)")
    nats = pytest.importorskip("nats")
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"SW_{tag}", f"shipway.test.{tag}"
    rows = generate(300, seed=81).drop(columns=["churn"])
    records = [{k: v for k, v in r.items() if v == v} for r in rows.to_dict("records")]

    async def publish() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        for k in range(0, 300, 5):
            await js.publish(subject, json.dumps(records[k : k + 5]).encode())
            if k == 150:
                await js.publish(subject, b"not json {")
        await nc.close()

    async def drop() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(publish())
    try:
        manifest = _service(slow_template, tmp_path / "svc", {
            "name": "events", "kind": "stream", "url": "env:EVENTS_NATS", "subject": subject,
            "stream": stream, "fetch_rows": 20, "batch_rows": 20, "ack_wait": "2s",
            "sink": {"path": "scored"},
        })  # fmt: skip
        env = {"EVENTS_NATS": url}
        before = _kill_part_way(manifest, "events", env, 60)
        assert 60 <= before < 300, before
        time.sleep(2.5)  # the unacknowledged messages are delivered again
        code, run = _run(manifest, "events", env)
        assert code == 0, run
        assert run["files"][0]["resumed"]
        logged = _decisions(manifest)
        assert len(logged) == 300
        assert sorted(int(d["inputs"]["customer_id"]) for d in logged) == sorted(
            int(r["customer_id"]) for r in records
        )
        held = json.loads(run_cli("quarantine", "list", "-m", str(manifest), "--json",
                                  env=ENV).stdout)  # fmt: skip
        assert [(h["row"], h["violations"][0]["rule"]) for h in held] == [
            ({"message": "not json {"}, "not_json")
        ]
        code, run = _run(manifest, "events", env)
        assert code == 0 and run["files"] == []
    finally:
        asyncio.run(drop())


# -- HTTP push ------------------------------------------------------------------------------------


def _key(manifest: Path, role: str, admin: str | None) -> str:
    res = run_cli("keys", "create", "--name", f"{role}-key", "--role", role, "-m", str(manifest),
                  env={**ENV, "SHIPWAY_API_KEY": admin or ""})  # fmt: skip
    assert res.returncode == 0, res.stderr
    return str(res.stdout.strip().splitlines()[-1])


def test_rows_pushed_over_http_go_through_the_ingress_and_are_taken_once(
    template: Path, tmp_path: Path, start_server: Any
) -> None:
    import io
    from concurrent.futures import ThreadPoolExecutor

    manifest = _service(
        template, tmp_path / "svc",
        {"name": "push", "kind": "push", "max_bad_share": {"warn": 0.1, "fail": 0.5}},
        {"name": "keep", "kind": "push", "use": "train", "label": "churn"},
        {"name": "nightly", "path": "incoming/*.csv", "sink": {"path": "scored"}},
        serving={"max_body_bytes": 40_000},
    )  # fmt: skip
    admin = _key(manifest, "admin", None)
    ingester, predictor = _key(manifest, "ingester", admin), _key(manifest, "predictor", admin)
    server = start_server(manifest, {"SHIPWAY_DEV_MODE": "", **ENV})
    url = f"{server.base}/v1/ingest/push"

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    frame = generate(200, seed=51).drop(columns=["churn"])
    records = [
        {k: v for k, v in r.items() if v == v} for r in frame[:20].to_dict("records")
    ]  # JSON has no NaN: a missing charge is left out
    assert httpx.post(url, json=records).status_code == 401
    denied = httpx.post(url, json=records, headers=auth(predictor))
    assert denied.status_code == 403 and "ingester" in denied.json()["error"]["message"]

    took = httpx.post(url, json=records, headers=auth(ingester))
    assert took.status_code == 200, took.text
    body = took.json()
    assert (body["rows_good"], body["duplicate"]) == (20, False)
    online = server.client.post(
        "/v1/predict", json={"inputs": records}, headers=auth(admin)
    ).json()["decisions"]
    assert [d["output"] for d in body["decisions"]] == [d["output"] for d in online]
    again = httpx.post(url, json={"records": records}, headers=auth(ingester)).json()
    assert again["duplicate"] and again["rows_good"] == 0  # the same rows: not taken twice

    as_csv = httpx.post(url, content=frame[20:40].to_csv(index=False).encode(),
                        headers={**auth(ingester), "Content-Type": "text/csv"})  # fmt: skip
    buf = io.BytesIO()
    frame[40:60].to_parquet(buf, index=False)
    as_parquet = httpx.post(url, content=buf.getvalue(), headers={
        **auth(ingester), "Content-Type": "application/vnd.apache.parquet"})  # fmt: skip
    assert (as_csv.json()["rows_good"], as_parquet.json()["rows_good"]) == (20, 20)

    big = frame.to_csv(index=False).encode() * 8  # over serving.max_body_bytes
    assert len(big) > 40_000
    too_big = httpx.post(url, content=big, headers={**auth(ingester), "Content-Type": "text/csv"})
    assert too_big.status_code == 413
    bad = frame[60:70].copy()
    bad.loc[bad.index[:6], "contract"] = "weekly"
    held = httpx.post(url, content=bad.to_csv(index=False).encode(),
                      headers={**auth(ingester), "Content-Type": "text/csv"})  # fmt: skip
    assert held.status_code == 422 and held.json()["rows_bad"] == 6
    wrong = httpx.post(f"{server.base}/v1/ingest/nightly", json=records, headers=auth(ingester))
    assert wrong.status_code == 400 and wrong.json()["error"]["rule"] == "push_source"
    assert httpx.post(f"{server.base}/v1/ingest/nope", json=records,
                      headers=auth(ingester)).status_code == 404  # fmt: skip

    # bounded load: 8 senders, 40 pushes of 4 rows; 15 repeat rows in other bytes (CRLF)
    chunks = [frame[100 + 4 * k : 104 + 4 * k].to_csv(index=False).encode() for k in range(25)]
    chunks += [c.replace(b"\n", b"\r\n") for c in chunks[:15]]

    def push(chunk: bytes) -> tuple[int, bool]:
        r = httpx.post(url, content=chunk, timeout=60,
                       headers={**auth(ingester), "Content-Type": "text/csv"})  # fmt: skip
        assert r.status_code == 200, r.text
        return int(r.json()["rows_good"]), bool(r.json()["duplicate"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(push, chunks))
    assert sum(n for n, _ in answers) == 100  # the same rows are taken once, whatever bytes
    assert sum(dup for _, dup in answers) == 15
    logged = [d for d in _decisions(manifest) if d["caller"] == "source:push"]
    assert len(logged) == 20 + 20 + 20 + 100 and len({d["id"] for d in logged}) == len(logged)

    history = [
        {k: v for k, v in r.items() if v == v} for r in generate(30, seed=52).to_dict("records")
    ]
    kept = httpx.post(f"{server.base}/v1/ingest/keep", json=history, headers=auth(ingester))
    assert kept.status_code == 200 and kept.json()["files"][0]["dataset_version"] == 1


# -- schema changes and replay --------------------------------------------------------------------


def test_schema_changes_are_reported_held_by_policy_and_replayed_after_a_fix(
    template: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    source = {"name": "nightly", "path": "incoming/*", "sink": {"path": "scored"},
              "max_bad_share": {"warn": 0.1, "fail": 0.9}}  # fmt: skip
    manifest = _service(template, folder, source)
    incoming = folder / "incoming"
    incoming.mkdir()
    first = generate(12, seed=61).drop(columns=["churn"])
    first.to_csv(incoming / "a.csv", index=False)
    renamed = generate(8, seed=62).drop(columns=["churn"]).rename(columns={"contract": "plan"})
    renamed.to_csv(incoming / "b.csv", index=False)
    texts = generate(6, seed=63).drop(columns=["churn"]).astype({"tenure_months": str})
    texts.loc[texts.index[:2], "tenure_months"] = "twelve"
    texts.to_parquet(incoming / "c.parquet", index=False)
    weekly = generate(10, seed=64).drop(columns=["churn"])
    weekly.loc[weekly.index[:3], "contract"] = "weekly"
    weekly.to_csv(incoming / "d.csv", index=False)
    for p in incoming.iterdir():
        _settled(p)

    code, run = _run(manifest, "nightly")
    assert code == 0, run
    files = {Path(f["path"]).name: f for f in run["files"]}
    assert files["a.csv"]["status"] == "scored" and files["a.csv"]["schema_changes"] == []
    b = files["b.csv"]
    assert b["status"] == "held" and b["rows_bad"] == 8
    assert {(c["change"], c["column"]) for c in b["schema_changes"]} == {
        ("new_column", "plan"), ("missing_column", "contract")}  # fmt: skip
    assert "schema_changes.map: {plan: ...}" in b["error"]
    c = files["c.parquet"]
    assert c["status"] == "held" and c["schema_changes"] == [
        {"change": "type_change", "column": "tenure_months", "expected": "int", "found": "string"}
    ]
    d = files["d.csv"]
    assert d["status"] == "scored" and d["rows_bad"] == 3  # a new category is not drift
    assert d["schema_changes"] == [{"change": "new_category", "column": "contract",
                                    "values": {"weekly": 3}, "distinct": 1, "rows": 3}]  # fmt: skip
    status = json.loads(run_cli("sources", "status", "-m", str(manifest), "--json",
                                env=ENV).stdout)  # fmt: skip
    diffs = {Path(f["path"]).name: f["schema_diff"] for f in status[0]["files_taken"]}
    assert "missing_column" in diffs["b.csv"]

    # the fix: map the renamed column, coerce text numbers, and accept the new category
    spec = yaml.safe_load(manifest.read_text())
    spec["sources"][0]["schema_changes"] = {"map": {"plan": "contract"}, "type_changes": "coerce"}
    contract = next(f for f in spec["contract"]["inputs"] if f["name"] == "contract")
    contract["values"].append("weekly")
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = run_cli("quarantine", "replay", "nightly", "-m", str(manifest), "--json", env=ENV)
    assert res.returncode == 0, res.stderr
    replay = json.loads(res.stdout)
    # the text numbers were held whole as a type change; replayed under coerce, the two that
    # do not read as numbers stay held, now for the type rule; the other 4 move on
    assert (replay["rows_in"], replay["rows_good"], replay["rows_bad"]) == (17, 15, 2)
    held = json.loads(run_cli("quarantine", "list", "-m", str(manifest), "--json",
                              env=ENV).stdout)  # fmt: skip
    still = [h for h in held if h["status"] == "held"]
    assert [[v["rule"] for v in h["violations"]] for h in still] == [["type"], ["type"]]
    assert {h["row"]["tenure_months"] for h in still} == {"twelve"}
    assert len(_decisions(manifest)) == 12 + 7 + 15
    assert len(list((folder / "scored").glob("replay-*"))) == 3
    audit = run_cli("audit", "list", "-m", str(manifest), "--json", env=ENV)
    events = [json.loads(line) for line in audit.stdout.splitlines()]
    events = [e for e in events if e["action"] == "quarantine.replay"]
    assert len(events) == 1 and events[0]["after"]["moved_on"] == 15
    res = run_cli("quarantine", "replay", "nightly", "-m", str(manifest), "--row", "999999",
                  env=ENV)  # fmt: skip
    assert res.returncode == 1 and "no held rows" in res.stderr


# -- train and labels ------------------------------------------------------------------------------


def test_train_batches_become_versions_and_labels_join_decisions(
    template: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    manifest = _service(
        template, folder,
        {"name": "nightly", "path": "incoming/*.csv", "sink": {"path": "scored"},
         "keep_inputs": True},
        {"name": "history", "use": "train", "label": "churn", "path": "history/*"},
        {"name": "truth", "use": "labels", "path": "truth/*.csv",
         "labels": {"key": "customer_id", "label": "churn"}},
    )  # fmt: skip
    for sub in ("incoming", "history", "truth"):
        (folder / sub).mkdir()
    one, two = generate(40, seed=71), generate(25, seed=72)
    one.to_csv(folder / "history" / "jan.csv", index=False)
    _settled(folder / "history" / "jan.csv")
    code, run = _run(manifest, "history")
    assert code == 0 and run["files"][0]["dataset_version"] == 1
    two.to_parquet(folder / "history" / "feb.parquet", index=False)
    one.to_csv(folder / "history" / "jan-again.csv", index=False, lineterminator="\r\n")
    for p in (folder / "history").iterdir():
        _settled(p)
    code, run = _run(manifest, "history")
    versions = {Path(f["path"]).name: f["dataset_version"] for f in run["files"]}
    assert versions == {"feb.parquet": 2, "jan-again.csv": 1}  # the same rows: no new version
    listed = json.loads(run_cli("datasets", "list", "-m", str(manifest), "--json",
                                env=ENV).stdout)  # fmt: skip
    assert [(d["version"], d["rows"], d["parent"]) for d in listed] == [(2, 25, 1), (1, 40, None)]
    out = tmp_path / "v1.csv"
    res = run_cli("datasets", "export", "history", "-o", str(out), "--version", "1",
                  "-m", str(manifest), env=ENV)  # fmt: skip
    assert res.returncode == 0, res.stderr
    exported = pd.read_csv(out)
    assert list(exported["customer_id"]) == list(one["customer_id"])
    assert list(exported["churn"]) == list(one["churn"])
    diff = json.loads(run_cli("datasets", "diff", "history", "1", "2", "-m", str(manifest),
                              env=ENV).stdout)  # fmt: skip
    assert diff["rows"] == [40, 25]
    dataset = Path(listed[1]["path"])
    dataset.write_bytes(dataset.read_bytes()[:-20] + b"x" * 20)
    res = run_cli("datasets", "show", "history", "1", "-m", str(manifest), env=ENV)
    assert res.returncode == 1  # a changed file is refused, not read

    scored = generate(15, seed=73)
    scored.drop(columns=["churn"]).to_csv(folder / "incoming" / "day.csv", index=False)
    _settled(folder / "incoming" / "day.csv")
    code, run = _run(manifest, "nightly")
    assert code == 0 and run["files"][0]["dataset_version"] == 1  # what was scored, kept
    kept = json.loads(run_cli("datasets", "list", "--source", "nightly", "-m", str(manifest),
                              "--json", env=ENV).stdout)  # fmt: skip
    assert kept[0]["rows"] == 15
    truth = scored[["customer_id", "churn"]].copy()
    truth.loc[truth.index[0], "customer_id"] = 1  # no decision carries it
    truth.loc[truth.index[1], "churn"] = "maybe"  # not a label the output spec allows
    truth.to_csv(folder / "truth" / "labels.csv", index=False)
    _settled(folder / "truth" / "labels.csv")
    code, run = _run(manifest, "truth")
    assert code == 0 and (run["rows_good"], run["rows_bad"]) == (13, 2), run
    held = json.loads(run_cli("quarantine", "list", "--source", "truth", "-m", str(manifest),
                              "--json", env=ENV).stdout)  # fmt: skip
    assert sorted(v["rule"] for h in held for v in h["violations"]) == [
        "output_spec",
        "unknown_key",
    ]
    report = json.loads(run_cli("monitor", "run", "-m", str(manifest), "--json",
                                env=ENV).stdout)  # fmt: skip
    assert report["performance"]["labeled"] == 13

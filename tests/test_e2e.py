"""End to end over real HTTP: init, serve, predict, reject, export, and SIGKILL durability."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Pilot, run_cli


def _export(manifest: Path, fmt: str = "jsonl", env: dict[str, str] | None = None) -> str:
    res = run_cli(
        "decisions",
        "export",
        str(manifest),
        "--format",
        fmt,
        env={"SHIPWAY_DATABASE_URL": "", **(env or {})},
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_single_row_is_answered_and_logged(workspace: Path, pilot: Pilot, start_server) -> None:
    server = start_server(workspace / "shipway.yaml")
    r = server.client.post("/v1/predict", json={"inputs": pilot.rows[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "output", "confidence", "model_version", "route"}
    assert body["output"] in (0, 1)
    assert 0.5 <= body["confidence"] <= 1.0
    assert body["model_version"] == 1
    assert body["route"] == "champion"
    logged = [json.loads(line) for line in _export(workspace / "shipway.yaml").splitlines()]
    assert [d["id"] for d in logged] == [body["id"]]
    assert logged[0]["inputs"] == pilot.rows[0]
    assert logged[0]["output"] == body["output"]
    assert logged[0]["route"] == "champion"


def test_model_answers_match_the_pilot(workspace: Path, pilot: Pilot, start_server) -> None:
    import joblib
    import pandas as pd

    model = joblib.load(pilot.model)
    rows = pilot.rows[:40]
    expected = model.predict(pd.DataFrame(rows)).tolist()
    server = start_server(workspace / "shipway.yaml")
    r = server.client.post("/v1/predict", json={"inputs": rows})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert [d["output"] for d in decisions] == expected
    assert len({d["id"] for d in decisions}) == 40


def test_violations_are_named_and_nothing_is_logged(
    workspace: Path, pilot: Pilot, start_server
) -> None:
    server = start_server(workspace / "shipway.yaml")
    bad = dict(pilot.rows[0])
    bad["mean radius"] = 250
    bad["nickname"] = "x"
    del bad["mean texture"]
    bad["mean area"] = "large"
    r = server.client.post("/v1/predict", json={"inputs": bad})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "contract_violation"
    got = {(f["field"], f["rule"]) for f in err["fields"]}
    assert got == {
        ("mean radius", "max"),
        ("nickname", "unknown_field"),
        ("mean texture", "required"),
        ("mean area", "type"),
    }
    radius = next(f for f in err["fields"] if f["field"] == "mean radius")
    assert radius["row"] == 0 and radius["value"] == 250
    assert radius["expected"].startswith("<= ")
    # A batch with one bad row is refused whole by default, naming the row.
    batch = [pilot.rows[1], {**pilot.rows[2], "mean radius": -5.0}, pilot.rows[3]]
    r = server.client.post("/v1/predict", json={"inputs": batch})
    assert r.status_code == 422
    assert [(f["row"], f["field"], f["rule"]) for f in r.json()["error"]["fields"]] == [
        (1, "mean radius", "min")
    ]
    assert _export(workspace / "shipway.yaml") == ""
    metrics = server.client.get("/metrics").text
    assert 'shipway_contract_violations_total{field="mean radius",rule="max"} 1.0' in metrics


def test_partial_batches_answer_good_rows(workspace: Path, pilot: Pilot, start_server) -> None:
    manifest = workspace / "shipway.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["contract"]["on_bad_rows"] = "partial"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    server = start_server(manifest)
    batch = [pilot.rows[0], {**pilot.rows[1], "mean radius": None}, pilot.rows[2]]
    r = server.client.post("/v1/predict", json={"inputs": batch})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["row"] for d in body["decisions"]] == [0, 2]
    assert [(v["row"], v["field"], v["rule"]) for v in body["rejected"]] == [
        (1, "mean radius", "nullable")
    ]
    assert len(_export(manifest).splitlines()) == 2


def test_bad_bodies_get_one_error_shape(workspace: Path, start_server) -> None:
    server = start_server(workspace / "shipway.yaml")
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "bad_request"),
        (b'{"rows": []}', 400, "bad_request"),
        (b'{"inputs": 5}', 400, "bad_request"),
        (b'{"inputs": []}', 400, "bad_request"),
        (b'{"inputs": [1]}', 422, "contract_violation"),
    ]
    for body, status, code in cases:
        r = server.client.post("/v1/predict", content=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["message"]
    r = server.client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = server.client.get("/v1/predict")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_ready_metrics_openapi(workspace: Path, pilot: Pilot, start_server) -> None:
    server = start_server(workspace / "shipway.yaml")
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz").json()
    assert ready["ready"] is True and ready["checks"]["store_reachable"] is True
    server.client.post("/v1/predict", json={"inputs": pilot.rows[0]})
    text = server.client.get("/metrics").text
    assert 'shipway_http_requests_total{route="/v1/predict",status="200"} 1.0' in text
    assert 'shipway_decisions_total{model_version="1",route="champion"} 1.0' in text
    assert "shipway_http_request_duration_seconds_bucket" in text
    assert "shipway_model_errors_total" in text
    spec = server.client.get("/openapi.json").json()
    record = spec["components"]["schemas"]["InputRecord"]
    assert record["properties"]["mean radius"]["type"] == "number"
    assert record["properties"]["mean radius"]["maximum"] > 28
    assert "mean texture" in record["required"]
    assert record["additionalProperties"] is False
    assert "/v1/predict" in spec["paths"]


def test_export_csv_and_since(workspace: Path, pilot: Pilot, start_server) -> None:
    server = start_server(workspace / "shipway.yaml")
    server.client.post("/v1/predict", json={"inputs": pilot.rows[:3]})
    rows = list(csv.DictReader(io.StringIO(_export(workspace / "shipway.yaml", "csv"))))
    assert len(rows) == 3
    assert float(rows[0]["input.mean radius"]) == pilot.rows[0]["mean radius"]
    assert rows[0]["route"] == "champion"
    res = run_cli(
        "decisions",
        "export",
        str(workspace / "shipway.yaml"),
        "--since",
        "2999-01-01",
        env={"SHIPWAY_DATABASE_URL": ""},
    )
    assert res.returncode == 0 and res.stdout == ""
    res = run_cli("decisions", "export", str(workspace / "shipway.yaml"), "--since", "soon")
    assert res.returncode != 0 and "--since" in res.stderr


def test_no_acknowledged_decision_is_lost_on_sigkill(
    workspace: Path, pilot: Pilot, start_server
) -> None:
    """Clients hammer the server; it is killed with SIGKILL mid-load; every id a client
    received must be in the log."""
    server = start_server(workspace / "shipway.yaml")
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.base, timeout=5) as c:
            i = k
            while not stop.is_set() and i < 20_000:
                rows = pilot.rows[i % 500 : i % 500 + (1 + i % 3)]
                try:
                    r = c.post("/v1/predict", json={"inputs": rows})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    body = r.json()
                    ids = (
                        [d["id"] for d in body["decisions"]]
                        if "decisions" in body
                        else [body["id"]]
                    )
                    with lock:
                        acked.extend(ids)
                        if len(acked) >= 600:
                            enough.set()
                i += 8

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(60), "the load never got going"
    server.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    logged = {json.loads(line)["id"] for line in _export(workspace / "shipway.yaml").splitlines()}
    missing = set(acked) - logged
    assert len(acked) >= 600
    assert not missing, f"{len(missing)} acknowledged decisions missing from the log"


@pytest.mark.postgres
def test_serving_on_postgresql(workspace: Path, pilot: Pilot, start_server, tmp_path: Path) -> None:
    import os

    from tests.conftest import PG_ENV, pg_schema_url

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"no PostgreSQL configured ({PG_ENV} is unset)")
    with pg_schema_url(base) as url:
        env = {"SHIPWAY_DATABASE_URL": url}
        res = run_cli(
            "init",
            "--model",
            str(pilot.model),
            "--data",
            str(pilot.data),
            "--target",
            "target",
            "--name",
            "cancer-pg",
            "--dir",
            str(tmp_path / "pg"),
            env=env,
        )
        assert res.returncode == 0, res.stderr
        manifest = tmp_path / "pg" / "shipway.yaml"
        server = start_server(manifest, env)
        r = server.client.post("/v1/predict", json={"inputs": pilot.rows[:5]})
        assert r.status_code == 200, r.text
        ids = [d["id"] for d in r.json()["decisions"]]
        server.stop()
        exported = _export(manifest, env=env)
        assert [json.loads(line)["id"] for line in exported.splitlines()] == ids
        assert not (tmp_path / "pg" / ".shipway" / "shipway.db").exists()

"""The HTTP app in-process (ASGI client): error bodies, limits, control routes, model errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shipway.api import create_app
from shipway.service import Service
from shipway.settings import Settings
from tests.conftest import Pilot, run_cli


@pytest.fixture
def fragile_workspace(pilot: Pilot, tmp_path: Path) -> Path:
    res = run_cli(
        "init",
        "--model",
        "python:tests.pilots.rules:predict",
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--name",
        "rules",
        "--dir",
        str(tmp_path),
        env={"SHIPWAY_DATABASE_URL": ""},
    )
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "shipway.yaml"
    data = yaml.safe_load(manifest.read_text())
    # Same registered function family, switched to a variant that fails on big tumours.
    from shipway.manifest import load_manifest
    from shipway.models import Registry
    from shipway.store.location import Location, open_service_store

    m = load_manifest(manifest)
    store = open_service_store(Location.of(m, manifest.resolve(), Settings(database_url=None)))
    mv = Registry(store).add(
        "rules", uri="python:tests.pilots.rules:fragile", flavor="python", contract=m.contract
    )
    store.close()
    data["model"]["version"] = mv.version
    data["model"]["uri"] = mv.uri
    data["serving"]["max_body_bytes"] = 20_000
    data["serving"]["max_batch_rows"] = 10
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path


class Client:
    """A synchronous face over an in-process ASGI client, on one event loop."""

    def __init__(self, service: Service) -> None:
        self.loop = asyncio.new_event_loop()
        self.service = service
        service.start()
        transport = httpx.ASGITransport(app=create_app(service, manage_lifecycle=False))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://shipway.test")

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()
        self.service.stop()


@pytest.fixture
def client(fragile_workspace: Path) -> Iterator[Client]:
    service = Service.open(
        fragile_workspace / "shipway.yaml", Settings(database_url=None, dev_mode=True)
    )
    c = Client(service)
    yield c
    c.close()


def test_model_failure_is_a_clear_error_logged_as_failed(client: Client, pilot: Pilot) -> None:
    big = {**pilot.rows[0], "mean radius": 27.0}
    r = client.post("/v1/predict", json={"inputs": big})
    # no fallback declared: the model's failure is a 503 that says why, never a made-up answer
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "model_unavailable"
    assert "ZeroDivisionError" in err["message"] and "ZeroDivisionError" in err["attempts"][0]
    ok = client.post("/v1/predict", json={"inputs": pilot.rows[1]})
    assert ok.status_code == 200
    assert ok.json()["output"] in (0, 1) and ok.json()["confidence"] in (0.6, 0.8)
    decision = client.get(f"/v1/decisions/{ok.json()['id']}").json()
    assert decision["inputs"] == pilot.rows[1]
    assert client.get("/v1/decisions/unknown").status_code == 404
    metrics = client.get("/metrics").text
    assert 'shipway_model_errors_total{code="model_error",model_version="2"} 1.0' in metrics
    assert "shipway_unanswered_rows_total 1.0" in metrics
    from shipway.decisions import iter_decisions

    logged = list(iter_decisions(client.service.store.engine))
    failed = [d for d in logged if d["error"]]
    assert len(failed) == 1 and failed[0]["output"] is None
    assert "ZeroDivisionError" in failed[0]["error"]
    assert failed[0]["inputs"]["mean radius"] == 27.0


def test_limits_on_body_and_batch(client: Client, pilot: Pilot) -> None:
    r = client.post("/v1/predict", json={"inputs": pilot.rows[:11]})
    assert r.status_code == 400
    assert "at most 10" in r.json()["error"]["message"]
    r = client.post("/v1/predict", content=b'{"inputs": "' + b"x" * 30_000 + b'"}')
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_service_description(client: Client) -> None:
    d = client.get("/v1/service").json()
    assert d["service"] == "rules"
    assert d["champion"]["version"] == 2
    assert d["champion"]["uri"] == "python:tests.pilots.rules:fragile"
    assert len(d["contract"]["inputs"]) == 30


def test_an_unwritable_log_means_no_answer(
    client: Client, pilot: Pilot, fragile_workspace: Path
) -> None:
    import sqlite3

    db = sqlite3.connect(fragile_workspace / ".shipway" / "shipway.db")
    db.execute("ALTER TABLE decisions RENAME TO decisions_gone")
    db.commit()
    db.close()
    r = client.post("/v1/predict", json={"inputs": pilot.rows[0]})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "store_unavailable"
    assert "could not commit 1 decisions" in err["message"]
    assert "output" not in r.json()

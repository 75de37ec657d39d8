"""Guards over real processes: an upstream model server the test starts, slows, breaks and
kills; a real ``shipway serve`` in front of it; HTTP on 127.0.0.1 only, bounded in count."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Pilot, free_port, run_cli

NO_DB = {"SHIPWAY_DATABASE_URL": ""}
ROOT = Path(__file__).resolve().parent.parent


class Upstream:
    """``tests/upstream_server.py`` as a real process on a fixed port (so it can come back)."""

    def __init__(self, model: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, mode: str = "ok") -> None:
        cmd = [
            sys.executable,
            "-m",
            "tests.upstream_server",
            "--port",
            str(self.port),
            "--mode",
            mode,
        ]
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("upstream did not start")

    def mode(self, mode: str) -> None:
        httpx.post(f"{self.base}/admin/mode", json={"mode": mode}, timeout=5).raise_for_status()

    def count(self) -> int:
        return int(httpx.get(f"{self.base}/admin/count", timeout=5).json()["count"])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def upstream(pilot: Pilot) -> Iterator[Upstream]:
    u = Upstream(pilot.model)
    u.start()
    yield u
    u.kill()


def edit_manifest(path: Path, **sections: Any) -> None:
    data = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def init_http_service(tmp_path: Path, pilot: Pilot, upstream: Upstream) -> Path:
    res = run_cli(
        "init",
        "--model",
        f"{upstream.base}/predict",
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--name",
        "remote",
        "--dir",
        str(tmp_path / "svc"),
        env=NO_DB,
    )
    assert res.returncode == 0, res.stderr
    return tmp_path / "svc" / "shipway.yaml"


def predict(server: Any, row: dict[str, Any]) -> httpx.Response:
    return server.client.post("/v1/predict", json={"inputs": row})


def test_fallback_chain_answers_each_failure_with_the_route_and_reason(
    tmp_path: Path, pilot: Pilot, upstream: Upstream, start_server: Any
) -> None:
    manifest = init_http_service(tmp_path, pilot, upstream)
    edit_manifest(
        manifest,
        guards={
            "timeout_ms": 400,
            "retries": 1,
            "backoff_ms": 5,
            "breaker": {"failures": 100, "window_s": 60, "cooldown_s": 60},
            "fallback": [{"model": "python:tests.pilots.rules:predict", "name": "rules"}],
        },
    )
    server = start_server(manifest, NO_DB)
    row = pilot.rows[3]

    ok = predict(server, row)
    assert ok.status_code == 200, ok.text
    assert ok.json()["route"] == "champion" and ok.json()["model_version"] == 1

    cases = {
        "slow": "no answer within 400 ms",
        "malformed": "not JSON",
        "bad_label": "is not one of",
        "error": "HTTP 500",
    }
    for mode, why in cases.items():
        upstream.mode(mode)
        r = predict(server, row)
        assert r.status_code == 200, (mode, r.text)
        body = r.json()
        assert body["route"] == "fallback:rules", mode
        assert body["model_version"] is None
        assert body["output"] == (0 if row["mean radius"] > 15 else 1)
        logged = server.client.get(f"/v1/decisions/{body['id']}").json()
        assert logged["route"] == "fallback:rules" and why in logged["reason"], (mode, logged)
    # slow and error are safe to retry: two attempts are named; a bad answer is not retried
    slow_and_error = server.client.get("/metrics").text
    assert 'shipway_model_retries_total{model_version="1"} 2.0' in slow_and_error

    upstream.kill()
    r = predict(server, row)
    assert r.json()["route"] == "fallback:rules"
    reason = server.client.get(f"/v1/decisions/{r.json()['id']}").json()["reason"]
    assert "unreachable" in reason

    metrics = server.client.get("/metrics").text
    assert 'shipway_fallback_rows_total{route="fallback:rules"} 5.0' in metrics
    assert 'code="model_timeout"' in metrics and 'code="output_invalid"' in metrics


def test_breaker_opens_then_closes_after_cooldown(
    tmp_path: Path, pilot: Pilot, upstream: Upstream, start_server: Any
) -> None:
    manifest = init_http_service(tmp_path, pilot, upstream)
    edit_manifest(
        manifest,
        guards={
            "timeout_ms": 1000,
            "breaker": {"failures": 3, "window_s": 60, "cooldown_s": 1.0},
            "fallback": [{"default": {"output": 1, "confidence": None}}],
        },
    )
    server = start_server(manifest, NO_DB)
    row = pilot.rows[0]
    upstream.mode("error")
    before = upstream.count()
    routes = [predict(server, row).json()["route"] for _ in range(6)]
    assert routes == ["default"] * 6
    # three calls reached the upstream; then the breaker opened and spared it
    assert upstream.count() - before == 3
    ready = server.client.get("/readyz").json()
    assert ready["breakers"]["v1"] == "open"
    assert ready["ready"] is True  # a declared default can still answer
    assert 'shipway_breaker_state{model_version="1"} 2.0' in server.client.get("/metrics").text
    last = predict(server, row).json()
    assert (
        "circuit breaker open" in server.client.get(f"/v1/decisions/{last['id']}").json()["reason"]
    )

    upstream.mode("ok")
    deadline = time.monotonic() + 20
    route = "default"
    while route != "champion" and time.monotonic() < deadline:
        time.sleep(0.25)
        route = predict(server, row).json()["route"]
    assert route == "champion"  # the half-open trial succeeded
    assert server.client.get("/readyz").json()["breakers"]["v1"] == "closed"
    assert predict(server, row).json()["route"] == "champion"


def test_cache_then_default_then_a_clear_503(
    tmp_path: Path, pilot: Pilot, upstream: Upstream, start_server: Any
) -> None:
    manifest = init_http_service(tmp_path, pilot, upstream)
    edit_manifest(
        manifest,
        guards={
            "timeout_ms": 1000,
            "breaker": {"failures": 0},
            "fallback": [{"cache": True}, {"default": {"output": 0, "confidence": 0.5}}],
        },
    )
    server = start_server(manifest, NO_DB)
    seen, fresh = pilot.rows[10], pilot.rows[11]
    first = predict(server, seen).json()
    assert first["route"] == "champion"
    upstream.kill()
    again = predict(server, seen).json()
    assert again["route"] == "cache"
    assert (again["output"], again["confidence"]) == (first["output"], first["confidence"])
    assert again["model_version"] == 1 and again["id"] != first["id"]
    other = predict(server, fresh).json()
    assert (other["route"], other["output"], other["confidence"]) == ("default", 0, 0.5)
    reason = server.client.get(f"/v1/decisions/{other['id']}").json()["reason"]
    assert "unreachable" in reason and "cache: no answer remembered" in reason


def test_no_fallback_means_503_with_reasons_and_a_logged_failure(
    tmp_path: Path, pilot: Pilot, upstream: Upstream, start_server: Any
) -> None:
    manifest = init_http_service(tmp_path, pilot, upstream)
    edit_manifest(manifest, guards={"timeout_ms": 1000, "breaker": {"failures": 0}})
    server = start_server(manifest, NO_DB)
    upstream.mode("malformed")
    r = predict(server, pilot.rows[0])
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "model_unavailable" and "not JSON" in err["attempts"][0]
    exported = run_cli("decisions", "export", str(manifest), env=NO_DB)
    assert exported.returncode == 0, exported.stderr
    assert "not JSON" in exported.stdout  # the failed row is in the log, with its error


def test_bad_default_answer_is_refused_at_start(tmp_path: Path, pilot: Pilot) -> None:
    res = run_cli(
        "init",
        "--model",
        str(pilot.model),
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--dir",
        str(tmp_path / "svc"),
        env=NO_DB,
    )
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "svc" / "shipway.yaml"
    edit_manifest(manifest, guards={"fallback": [{"default": {"output": "approve"}}]})
    port = free_port()
    res = subprocess.run(
        [sys.executable, "-m", "shipway", "serve", str(manifest), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, **NO_DB, "SHIPWAY_DEV_MODE": "1"},
    )
    assert res.returncode != 0
    assert "guards.fallback[0].default is not a valid answer" in res.stderr


def test_rate_limit_429_and_load_shedding_503_with_retry_after(
    tmp_path: Path, pilot: Pilot, upstream: Upstream, start_server: Any
) -> None:
    manifest = init_http_service(tmp_path, pilot, upstream)
    data = yaml.safe_load(manifest.read_text())
    data["serving"]["limits"] = {
        "rate": {"per_second": 2, "burst": 4, "key": "header:x-client-id"},
        "max_in_flight": 3,
    }
    data["guards"] = {"timeout_ms": 10000, "breaker": {"failures": 0}}
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    server = start_server(manifest, NO_DB)
    row = pilot.rows[0]

    codes = []
    for _ in range(8):  # a burst from one caller, faster than 2/s
        r = server.client.post(
            "/v1/predict", json={"inputs": row}, headers={"x-client-id": "alice"}
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limited"
    assert codes[:4] == [200] * 4 and 429 in codes[4:]
    other = server.client.post("/v1/predict", json={"inputs": row}, headers={"x-client-id": "bob"})
    assert other.status_code == 200  # another caller has a bucket of its own

    upstream.mode("slow")  # every call now takes 3 s: in-flight work piles up

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.base, timeout=30) as c:
            return c.post(
                "/v1/predict", json={"inputs": row}, headers={"x-client-id": f"caller-{i}"}
            )

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) >= 1 and 503 in statuses
    shed = [r for r in results if r.status_code == 503]
    assert all(r.json()["error"]["code"] == "overloaded" for r in shed)
    assert all(r.headers["retry-after"] == "1" for r in shed)
    metrics = server.client.get("/metrics").text
    assert f"shipway_rate_limited_total {float(codes.count(429))}" in metrics
    assert f"shipway_shed_total {float(len(shed))}" in metrics


def test_body_size_limit_is_413(workspace: Path, start_server: Any) -> None:
    manifest = workspace / "shipway.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["serving"]["max_body_bytes"] = 2048
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    server = start_server(manifest, NO_DB)
    r = server.client.post(
        "/v1/predict",
        content=b"{" + b" " * 5000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_concurrent_single_rows_are_scored_in_shared_model_calls(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    server = start_server(workspace / "shipway.yaml", NO_DB)
    rows = pilot.rows[:200]
    alone = [predict(server, r).json() for r in rows[:20]]

    def one(r: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(base_url=server.base, timeout=30) as c:
            return c.post("/v1/predict", json={"inputs": r}).json()

    with cf.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(one, rows))
    # each caller still gets its own decision and the same answer as when sent alone
    assert len({d["id"] for d in together}) == len(rows)
    for a, b in zip(alone, together[:20], strict=True):
        assert a["output"] == b["output"]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-9)  # BLAS rounding
    metrics = server.client.get("/metrics").text
    calls = rows_scored = 0.0
    for line in metrics.splitlines():
        if line.startswith("shipway_model_batch_rows_count"):
            calls = float(line.split()[-1])
        if line.startswith("shipway_model_batch_rows_sum"):
            rows_scored = float(line.split()[-1])
    assert rows_scored == len(rows) + len(alone)
    assert calls < rows_scored  # some model calls carried several callers' rows


def test_response_cache_answers_repeated_inputs_without_calling_the_model(
    tmp_path: Path, pilot: Pilot, upstream: Upstream, start_server: Any
) -> None:
    manifest = init_http_service(tmp_path, pilot, upstream)
    data = yaml.safe_load(manifest.read_text())
    data["serving"]["cache"] = {"ttl_s": 300, "max_entries": 100}
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    server = start_server(manifest, NO_DB)
    before = upstream.count()
    first = predict(server, pilot.rows[5]).json()
    second = predict(server, pilot.rows[5]).json()
    other = predict(server, pilot.rows[6]).json()
    assert (first["route"], second["route"], other["route"]) == ("champion", "cache", "champion")
    assert second["output"] == first["output"] and second["model_version"] == 1
    assert second["id"] != first["id"]  # a decision of its own, logged
    assert server.client.get(f"/v1/decisions/{second['id']}").json()["route"] == "cache"
    assert upstream.count() - before == 2
    assert "shipway_cache_hits_total 1.0" in server.client.get("/metrics").text

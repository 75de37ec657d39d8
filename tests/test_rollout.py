"""Registry and safe rollout over a real server: add, gate, shadow, canary, step, promote,
rollback; no request fails while the plan changes."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import joblib
import pandas as pd
import pytest
import yaml

from shipway.lifecycle.evaluate import gate
from shipway.manifest import load_manifest, parse_manifest
from shipway.models import Registry
from shipway.serving.router import bucket
from shipway.settings import Settings
from shipway.store.location import Location, open_service_store
from tests.conftest import Pilot, run_cli

NO_DB = {"SHIPWAY_DATABASE_URL": ""}


def cli(*args: str) -> tuple[int, str, str]:
    res = run_cli(*args, env={**NO_DB, "COLUMNS": "200"})
    return res.returncode, res.stdout, res.stderr


@pytest.fixture
def svc(workspace: Path, pilot: Pilot, tmp_path: Path) -> dict[str, Any]:
    """A service with v1 (the pilot), v2 (a retrained model that passes the gate) and
    v3 (a model that always answers 1, which fails it)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import RandomForestClassifier

    manifest = workspace / "shipway.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["rollout"] = {"steps": [10, 50, 100], "min_requests": 20, "max_error_rate": 0.05}
    data["quality"]["not_worse_than_champion_by"] = 0.05
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    frame = pd.read_csv(pilot.data)
    x, y = frame.drop(columns=["target"]), frame["target"]
    joblib.dump(
        RandomForestClassifier(n_estimators=30, random_state=0).fit(x, y),
        tmp_path / "forest.joblib",
    )
    joblib.dump(
        DummyClassifier(strategy="constant", constant=1).fit(x, y), tmp_path / "dummy.joblib"
    )
    code, out, err = cli(
        "models",
        "add",
        "--model",
        str(tmp_path / "forest.joblib"),
        "-m",
        str(manifest),
        "--data",
        str(pilot.data),
        "--note",
        "forest",
    )
    assert code == 0, err
    assert "Registered version 2" in out and "gate: passed" in out
    code, out, err = cli(
        "models", "add", "--model", str(tmp_path / "dummy.joblib"), "-m", str(manifest)
    )
    assert code == 0, err
    assert "Registered version 3" in out and "gate: failed" in out
    return {"manifest": manifest, "dir": workspace}


def _registry(manifest: Path) -> tuple[Registry, Any]:
    m = load_manifest(manifest)
    store = open_service_store(Location.of(m, manifest.resolve(), Settings(database_url=None)))
    return Registry(store), store


def test_versions_keep_lineage_and_refuse_misfits(
    svc: dict[str, Any], pilot: Pilot, tmp_path: Path
) -> None:
    from sklearn.tree import DecisionTreeClassifier

    manifest = svc["manifest"]
    reg, store = _registry(manifest)
    try:
        v2 = reg.get("cancer", 2)
        assert v2.note == "forest"
        assert v2.data_sha256 is not None and len(v2.data_sha256) == 64
        assert v2.params["n_estimators"] == 30
        assert v2.metrics["champion"]["version"] == 1
        assert v2.metrics["gate"]["passed"] is True
        v3 = reg.get("cancer", 3)
        assert v3.metrics["gate"]["passed"] is False
        assert any("accuracy" in r for r in v3.metrics["gate"]["reasons"])
    finally:
        store.close()
    # a model that needs a feature the contract lacks is refused, nothing is registered
    frame = pd.read_csv(pilot.data)
    frame["extra"] = 1.0
    joblib.dump(
        DecisionTreeClassifier(max_depth=3).fit(frame.drop(columns=["target"]), frame["target"]),
        tmp_path / "extra.joblib",
    )
    code, _out, err = cli(
        "models", "add", "--model", str(tmp_path / "extra.joblib"), "-m", str(manifest)
    )
    assert code != 0
    assert "refused" in err and "extra" in err
    code, out, _ = cli("models", "list", "-m", str(manifest), "--json")
    listing = json.loads(out)
    assert [m["version"] for m in listing["models"]] == [1, 2, 3]
    assert listing["state"]["champion"] == 1


GATED = """\
version: 1
service: {name: cancer}
model: {version: 1, uri: "python:tests.pilots.rules:predict"}
contract: {inputs: [{name: radius, type: float}]}
output: {kind: classification, labels: [0, 1]}
quality:
  not_worse_than_champion_by: 0.02
  metrics: {roc_auc: {min: 0.95}}
"""


def test_gate_compares_on_the_metrics_both_versions_produce() -> None:
    champion = {"accuracy": 0.95, "f1_macro": 0.94, "roc_auc": 0.99, "log_loss": 0.1}
    no_roc = "roc_auc cannot be computed for this version (it needs class probabilities)"
    m = parse_manifest(GATED)
    # a version without probabilities is compared on accuracy and F1, and told so
    res = gate(m, {"accuracy": 0.94, "f1_macro": 0.93}, champion)
    assert res.passed and res.reasons == []
    assert res.checks == [
        "accuracy 0.9400 >= champion 0.9500 - 0.02",
        "f1_macro 0.9300 >= champion 0.9400 - 0.02",
    ]
    assert res.notes == [
        f"{no_roc}; not checked",
        "compared with the champion on the metrics both versions produce: accuracy, f1_macro",
    ]
    assert not gate(m, {"accuracy": 0.90, "f1_macro": 0.93}, champion).passed
    # without a champion margin nothing is left to check, and that is not a pass
    bare = parse_manifest(GATED.replace("  not_worse_than_champion_by: 0.02\n", ""))
    res = gate(bare, {"accuracy": 0.94, "f1_macro": 0.93}, champion)
    assert not res.passed
    assert res.reasons == ["no metric the gate asks for can be computed for this version"]
    # the manifest can make a missing metric a failure
    strict = parse_manifest(GATED + "  on_missing_metric: fail\n")
    res = gate(strict, {"accuracy": 0.94, "f1_macro": 0.93}, champion)
    assert not res.passed and res.reasons == [no_roc] and res.notes == []


def test_gate_blocks_canary_unless_forced_with_reason(svc: dict[str, Any]) -> None:
    m = str(svc["manifest"])
    code, _out, err = cli("rollout", "canary", "3", "-m", m)
    assert code != 0 and "failed its evaluation gate" in err
    code, _out, err = cli("rollout", "canary", "3", "-m", m, "--force")
    assert code != 0 and "--force needs a reason" in err
    code, out, err = cli("rollout", "canary", "3", "-m", m, "--force", "--reason", "load test")
    assert code == 0, err
    assert "canary v3 at 10%" in out
    code, out, _ = cli("rollout", "history", "-m", m)
    assert "force-canary" in out and "load test" in out


class Load:
    """Bounded background traffic: single-row requests with a user header."""

    def __init__(self, base: str, rows: list[dict[str, Any]], users: int = 40) -> None:
        self.base = base
        self.rows = rows
        self.users = users
        self.results: list[tuple[float, int, dict[str, Any] | None, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(4)]

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as c:
            i = k
            while not self._stop.is_set() and i < 40_000:
                user = f"user-{i % self.users}"
                try:
                    r = c.post(
                        "/v1/predict",
                        json={"inputs": self.rows[i % len(self.rows)]},
                        headers={"X-User": user},
                    )
                    item = (
                        time.monotonic(),
                        r.status_code,
                        r.json() if r.status_code == 200 else None,
                        user,
                    )
                except httpx.HTTPError as exc:
                    item = (time.monotonic(), 0, {"error": str(exc)}, user)
                with self._lock:
                    self.results.append(item)
                i += 4

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def since(self, t0: float) -> list[tuple[float, int, dict[str, Any] | None, str]]:
        with self._lock:
            return [r for r in self.results if r[0] >= t0]

    def wait_for(self, n: int, t0: float, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.since(t0)) < n:
            assert time.monotonic() < deadline, "load stalled"
            time.sleep(0.05)


def _applied(server: Any, generation: int, timeout: float = 10) -> float:
    """Seconds until the server's plan reaches ``generation``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.client.get("/v1/service").json()["rollout"]["generation"] >= generation:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"plan generation {generation} not applied within {timeout}s")


def test_canary_steps_promote_and_rollback_under_load(
    svc: dict[str, Any], pilot: Pilot, start_server
) -> None:
    m = str(svc["manifest"])
    server = start_server(svc["manifest"])
    with Load(server.base, pilot.rows) as load:
        load.wait_for(50, 0)
        # 1. a sticky canary at 10%, keyed by a header
        assert (
            cli(
                "rollout",
                "canary",
                "2",
                "-m",
                m,
                "--key",
                "header:X-User",
                "--reason",
                "try the forest",
            )[0]
            == 0
        )
        assert _applied(server, 1) < 3.0
        t1 = time.monotonic() + 0.2
        load.wait_for(400, t1)
        window = load.since(t1)
        by_user: dict[str, set[int]] = {}
        for _, status, body, user in window:
            assert status == 200, body
            by_user.setdefault(user, set()).add(body["model_version"])
        assert all(len(v) == 1 for v in by_user.values()), "a user saw two versions"
        for user, versions in by_user.items():
            expected = 2 if bucket(user) < 10 else 1
            assert versions == {expected}, user
        # 2. step to 50% once the checks pass, 3. promote, 4. roll back
        code, out, err = cli("rollout", "step", "-m", m, "--reason", "healthy")
        assert code == 0, err + out
        assert "canary v2 at 50%" in out
        _applied(server, 2)
        deadline = time.monotonic() + 60  # promotion needs this step's checks to pass too
        while time.monotonic() < deadline:
            status = json.loads(cli("rollout", "status", "--json", "-m", m)[1])
            if status["canary"]["ready"]:
                break
            time.sleep(0.5)
        assert cli("rollout", "promote", "-m", m, "--reason", "better")[0] == 0
        assert _applied(server, 3) < 3.0
        t3 = time.monotonic() + 0.2  # requests already in flight may finish on the old plan
        load.wait_for(100, t3)
        after_promote = load.since(t3)
        assert {b["model_version"] for _, s, b, _ in after_promote if s == 200} == {2}
        assert {b["route"] for _, s, b, _ in after_promote if s == 200} == {"champion"}
        assert cli("rollout", "rollback", "-m", m, "--reason", "page at 3am")[0] == 0
        assert _applied(server, 4) < 3.0
        t4 = time.monotonic() + 0.2
        load.wait_for(100, t4)
        assert {b["model_version"] for _, s, b, _ in load.since(t4) if s == 200} == {1}
    statuses = Counter(s for _, s, _, _ in load.results)
    assert set(statuses) == {200}, statuses  # no request failed during any swap
    code, out, _ = cli("rollout", "history", "-m", m)
    for move in ("canary", "step", "promote", "rollback"):
        assert move in out
    assert "page at 3am" in out


def test_unkeyed_canary_share_is_within_tolerance(
    svc: dict[str, Any], pilot: Pilot, start_server
) -> None:
    server = start_server(svc["manifest"])
    r = server.client.post(
        "/v1/rollout/canary", json={"version": 2, "percent": 30, "reason": "share check"}
    )
    assert r.status_code == 200, r.text
    n = 1200
    seen = Counter()
    for i in range(0, n, 20):
        # one request per row, so that each is routed on its own
        for row in [pilot.rows[(i + k) % len(pilot.rows)] for k in range(20)]:
            body = server.client.post("/v1/predict", json={"inputs": row}).json()
            seen[body["route"]] += 1
    share = seen["canary"] / n
    sigma = math.sqrt(0.3 * 0.7 / n)
    assert abs(share - 0.3) < 4 * sigma, (share, seen)


def test_shadows_never_reach_callers_nor_slow_them(
    svc: dict[str, Any], pilot: Pilot, start_server
) -> None:
    manifest = svc["manifest"]
    reg, store = _registry(manifest)
    contract = load_manifest(manifest).contract
    try:
        slow = reg.add(
            "cancer", uri="python:tests.pilots.rules:sleepy", flavor="python", contract=contract
        ).version
        bad = reg.add(
            "cancer", uri="python:tests.pilots.rules:explodes", flavor="python", contract=contract
        ).version
    finally:
        store.close()
    server = start_server(manifest)
    rows = pilot.rows[:30]
    before = [server.client.post("/v1/predict", json={"inputs": r}).json() for r in rows]
    for v in (slow, bad, 2):
        r = server.client.post("/v1/rollout/shadow", json={"version": v, "reason": "compare"})
        assert r.status_code == 200, r.text
    t0 = time.monotonic()
    during = [server.client.post("/v1/predict", json={"inputs": r}).json() for r in rows]
    elapsed = time.monotonic() - t0
    # the slow shadow sleeps 2 s a call: had the caller waited for it, 30 calls take 60 s
    assert elapsed < 20, elapsed
    assert [d["output"] for d in during] == [d["output"] for d in before]
    assert {d["route"] for d in during} == {"champion"}
    assert {d["model_version"] for d in during} == {1}
    time.sleep(1.5)  # let the shadows finish or time out
    status = server.client.get("/v1/rollout").json()
    by_version = {s["version"]: s for s in status["shadows"]}
    assert by_version[2]["compared"] >= 25
    assert by_version[2]["agreement"] > 0.9
    assert by_version[bad]["failed"] >= 25 and by_version[bad]["compared"] == 0
    assert by_version[slow]["compared"] <= 2  # timed out or skipped, never answered in time
    code, out, _ = cli("rollout", "status", "-m", str(manifest))
    assert code == 0 and f"shadow v{bad}:" in out and "agreement" in out


def test_automatic_steps_when_checks_pass(svc: dict[str, Any], pilot: Pilot, start_server) -> None:
    manifest = svc["manifest"]
    data = yaml.safe_load(manifest.read_text())
    data["rollout"].update({"auto": True, "check_interval_s": 0.3, "min_requests": 10})
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    server = start_server(manifest)
    r = server.client.post("/v1/rollout/canary", json={"version": 2, "reason": "auto"})
    assert r.status_code == 200, r.text
    assert r.json()["state"]["canary_percent"] == 10
    deadline = time.monotonic() + 60
    i = 0
    while time.monotonic() < deadline:
        server.client.post("/v1/predict", json={"inputs": pilot.rows[i % len(pilot.rows)]})
        i += 1
        if i % 50 == 0:
            state = server.client.get("/v1/service").json()["rollout"]
            if state["canary_percent"] == 100:
                break
    assert state["canary_percent"] == 100, state
    history = server.client.get("/v1/rollout/history").json()["events"]
    autos = [e for e in history if e["actor"] == "system:auto-step"]
    assert [e["after"]["canary_percent"] for e in autos] == [50, 100]
    assert state["champion"] == 1  # promotion stays a human decision

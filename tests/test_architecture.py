"""The seams every part plugs into, over real servers: one ingress for every route that carries
rows (limits, caller), the notification outbox (nothing outbound on a request or a poll, nothing
lost when the process dies), names in rules checked at load, shutdown under shadow traffic, and
the import rules that keep one owner per table."""

from __future__ import annotations

import ast
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shipway.errors import ManifestError
from shipway.manifest import load_manifest, parse_manifest
from shipway.models import Registry
from shipway.settings import Settings
from shipway.store.location import Location, open_service_store
from tests.conftest import Pilot, Server, edit_sections, free_port, run_cli
from tests.test_govern import PROD, make_key
from tests.test_monitor import Receiver

NO_DB = {"SHIPWAY_DATABASE_URL": ""}
SRC = Path(__file__).resolve().parent.parent / "src" / "shipway"


_edit = edit_sections  # the shared helper, under this module's short name


class Silent:
    """A webhook target that accepts connections and never answers (nor closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self._stop = True
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    s = Silent()
    yield s
    s.close()


# -- one ingress ---------------------------------------------------------------------------------


def test_every_route_that_carries_rows_has_the_same_body_limit(
    workspace: Path, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    _edit(manifest, serving={"max_body_bytes": 1_000_000})
    server = start_server(manifest)
    big = b'{"inputs": [' + b"1," * 25_000_000 + b"1]}"  # 50 MB
    routes = [
        "/v1/predict",
        "/v2/models/cancer/infer",
        "/v2/models/cancer/versions/1/infer",
        "/v1/feedback",
    ]
    for path in routes:
        r = server.client.post(path, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413, (path, r.status_code, r.text[:200])
        body = r.json()
        code = body["code"] if path.startswith("/v2") else body["error"]["code"]
        assert code == "payload_too_large", (path, body)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            for _ in range(50):
                yield b" " * 1_000_000

        r = server.client.post(path, content=chunks())
        assert r.status_code == 413, (path, "chunked", r.status_code)
    # the service is unharmed
    assert server.client.get("/readyz").status_code == 200


def test_v2_decisions_record_the_authenticated_caller(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    admin = make_key(manifest, "admin", None)
    predictor = make_key(manifest, "predictor", admin)
    server = start_server(manifest, PROD)
    names = list(pilot.rows[0])
    body = {
        "inputs": [
            {"name": n, "datatype": "FP64", "shape": [1], "data": [pilot.rows[0][n]]} for n in names
        ]
    }
    auth = {"Authorization": f"Bearer {predictor}"}
    r = server.client.post(
        "/v2/models/cancer/infer", json=body, headers={**auth, "x-shipway-caller": "someone-else"}
    )
    assert r.status_code == 200, r.text
    did = next(o for o in r.json()["outputs"] if o["name"] == "decision_id")["data"][0]
    one = server.client.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=auth).json()
    admin_auth = {"Authorization": f"Bearer {admin}"}
    v2_decision = server.client.get(f"/v1/decisions/{did}", headers=admin_auth).json()
    v1_decision = server.client.get(f"/v1/decisions/{one['id']}", headers=admin_auth).json()
    assert v2_decision["caller"] == v1_decision["caller"] == "key:predictor-key"


def test_rate_limits_are_keyed_as_the_manifest_says(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    admin = make_key(manifest, "admin", None)
    k1 = make_key(manifest, "predictor", admin)
    k2 = make_key(manifest, "predictor", admin)
    _edit(
        manifest,
        serving={
            "limits": {
                "rate": [
                    {"per_second": 0.01, "burst": 5, "key": "header:x-tenant"},
                    {"per_second": 0.01, "burst": 40, "key": "principal"},
                ]
            }
        },
    )
    server = start_server(manifest, PROD)
    c = server.client
    row = {"inputs": pilot.rows[0]}

    def send(key: str, tenant: str | None, path: str = "/v1/predict", body: Any = row) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if tenant is not None:
            headers["x-tenant"] = tenant
        return c.post(path, json=body, headers=headers)

    # one API key on behalf of many tenants: each tenant sent once, so all pass
    codes = [send(k1, f"tenant-{i}").status_code for i in range(30)]
    assert codes == [200] * 30
    # one tenant behind two keys gets its own limit once, not once per key
    got = [send(k1 if i % 2 else k2, "acme").status_code for i in range(8)]
    assert got.count(200) == 5 and got.count(429) == 3
    refused = send(k2, "acme")
    assert refused.status_code == 429 and "retry-after" in refused.headers
    assert refused.json()["error"]["limit"] == "header:x-tenant"
    # the principal limit is separate: k1 has spent 32 of its 40 (30 tenants and 2 for acme;
    # a request one limit refuses spends nothing from the others)
    codes = [send(k1, f"other-{i}").status_code for i in range(9)]
    assert codes == [200] * 8 + [429]
    assert send(k1, "fresh").json()["error"]["limit"] == "principal"
    # a request without the header is refused, naming it
    missing = send(k2, None)
    assert missing.status_code == 400
    assert "x-tenant" in missing.json()["error"]["message"]
    # V2 infer is limited the same way, with the protocol's error body
    names = list(pilot.rows[0])
    v2 = {
        "inputs": [
            {"name": n, "datatype": "FP64", "shape": [1], "data": [pilot.rows[0][n]]} for n in names
        ]
    }
    assert send(k2, "acme", "/v2/models/cancer/infer", v2).status_code == 429
    assert send(k2, None, "/v2/models/cancer/infer", v2).status_code == 400
    assert send(k2, "new-tenant", "/v2/models/cancer/infer", v2).status_code == 200


# -- the outbox ----------------------------------------------------------------------------------


def test_a_dead_webhook_stalls_neither_rollout_nor_review(
    workspace: Path, pilot: Pilot, silent: Silent, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    _edit(
        manifest,
        review={
            "policies": [{"name": "all", "sample": 1.0, "mode": "hold"}],
            "queues": {"default": {"sla": "1s"}},
            "webhook": silent.url,
        },
        monitor={"schedule": False, "webhooks": [{"url": silent.url, "timeout_s": 5}]},
    )
    server = start_server(manifest)
    c = server.client
    held = [c.post("/v1/predict", json={"inputs": r}).json() for r in pilot.rows[:6]]
    assert {h["status"] for h in held} == {"pending_review"}
    # past the 1 s SLA: the sweep escalates each item once and queues an alert for the dead target
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events = c.get("/v1/alerts").json()["events"]
        if len(events) >= 6:
            break
        time.sleep(0.2)
    assert len(events) >= 6
    # the outbox worker is now stuck on the silent target; a review outcome answers at once
    item = c.get("/v1/review/next").json()
    t0 = time.monotonic()
    r = c.post(f"/v1/review/{item['id']}", json={"action": "approve"})
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["status"] == "done"
    assert took < 2.0, f"a review outcome took {took:.1f} s"  # inline delivery took 20 s
    # and a rollout move made elsewhere reaches the server within a second
    res = run_cli(
        "stop", "--reason", "test", "-m", str(manifest), env={**NO_DB, "SHIPWAY_DEV_MODE": "1"}
    )
    assert res.returncode == 0, res.stderr
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        if c.get("/readyz").json()["stopped"]:
            break
        time.sleep(0.02)
    applied = time.monotonic() - t0
    assert applied < 1.0, f"the stop reached the server after {applied:.1f} s"
    # every notification is queued with its attempts recorded, none was dropped
    msgs = c.get("/v1/outbox").json()["messages"]
    assert len([m for m in msgs if m["topic"] == "review.sla" or m["topic"] == "alert"]) >= 6
    assert any(m["topic"] == "review.held" for m in msgs)
    assert {m["status"] for m in msgs} <= {"pending", "failed"}


def test_a_notification_outlives_a_killed_server(workspace: Path, tmp_path: Path) -> None:
    manifest = workspace / "shipway.yaml"
    port = free_port()
    hook = f"http://127.0.0.1:{port}/hook"  # nothing listens there yet
    _edit(
        manifest,
        monitor={
            "schedule": False,
            "min_rows": 1,
            "alerts": [{"name": "always", "when": "n >= 0", "do": ["notify"]}],
            "webhooks": [{"url": hook, "timeout_s": 1, "attempts": 10}],
        },
    )
    first = Server(manifest, NO_DB)
    first.wait_ready()
    try:
        fired = first.client.post("/v1/monitor/run").json()
        assert [a["status"] for a in fired["alerts"]] == ["firing"]
        deadline = time.monotonic() + 15
        msg: dict[str, Any] = {}
        while time.monotonic() < deadline:
            msg = first.client.get("/v1/outbox").json()["messages"][0]
            if msg["attempts"] >= 1:
                break
            time.sleep(0.1)
        assert msg["status"] == "pending" and msg["attempts"] >= 1, msg
        assert "Connect" in (msg["last_error"] or "")
    finally:
        first.kill9()
        first.stop()
    receiver = Receiver(port)
    second = Server(manifest, NO_DB)
    try:
        second.wait_ready()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not receiver.events:
            time.sleep(0.1)
        assert receiver.statuses() == [("always", "firing")]
        msg = second.client.get("/v1/outbox").json()["messages"][0]
        assert msg["status"] == "delivered"
        assert [a["ok"] for a in msg["attempt_log"]][-1] is True
        assert all(not a["ok"] for a in msg["attempt_log"][:-1])
        metrics = second.client.get("/metrics").text
        assert 'shipway_outbox_attempts_total{result="delivered",topic="alert"} 1.0' in metrics
    finally:
        second.stop()
        receiver.close()


# -- names in conditions ---------------------------------------------------------------------------


def test_unknown_names_in_alert_rules_and_review_policies_are_manifest_errors(
    workspace: Path,
) -> None:
    manifest = workspace / "shipway.yaml"
    _edit(
        manifest,
        monitor={
            "alerts": [
                {"name": "fine", "when": "accuracy < 0.8 and 'x' in drifted_features"},
                {"name": "typo", "when": "acuracy < 0.8"},
                {"name": "rows", "when": "rows > 0"},
                {"name": "feature", "when": "drift.nonexistent.effect > 0.2"},
            ]
        },
        review={"policies": [{"name": "p", "when": "inputs.nope > 1 or confidence < 0.5"}]},
    )
    text = manifest.read_text()
    lines = text.splitlines()

    def line_of(needle: str) -> int:
        return next(i for i, t in enumerate(lines, 1) if needle in t)

    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert problems[0].startswith(f"{manifest}:{line_of('acuracy')}: monitor.alerts.1.when:")
    assert "did you mean 'accuracy'" in problems[0]
    assert problems[1].startswith(f"{manifest}:{line_of('rows > 0')}: monitor.alerts.2.when:")
    assert "'drift.nonexistent.effect'" in problems[2]
    assert problems[3].startswith(f"{manifest}:{line_of('inputs.nope')}: review.policies.0.when")
    res = run_cli("serve", "-m", str(manifest), env=NO_DB)
    assert res.returncode == 1 and f"shipway.yaml:{line_of('acuracy')}" in res.stderr
    # per-input drift figures are names too, for the contract's fields
    spec = yaml.safe_load(text)
    spec["contract"]["inputs"][0]["name"] = "radius"
    spec["monitor"]["alerts"] = [{"name": "r", "when": "drift.radius.drifted == true"}]
    spec["review"]["policies"] = [{"name": "p", "when": "inputs.radius > 20"}]
    assert parse_manifest(yaml.safe_dump(spec)).monitor.alerts[0].name == "r"


def test_the_monitor_figures_are_the_ones_rules_may_name() -> None:
    from shipway.manifest import ALERT_FIGURES, SOURCE_FIGURES
    from shipway.monitor.engine import Monitor

    ctx = Monitor.context({"n": 0, "sources": {"nightly": {"freshness_s": 5.0}}})
    # per-name figures (drift.FIELD.x, freshness_s.SOURCE) are nested under their family
    assert set(ctx) - {"drift", *SOURCE_FIGURES} == set(ALERT_FIGURES)
    assert ctx["freshness_s"] == {"nightly": 5.0} and ctx["ingest_failures"] == {"nightly": None}


# -- shutdown ----------------------------------------------------------------------------------


def test_shutdown_under_shadow_traffic_loses_no_started_shadow(
    workspace: Path, pilot: Pilot
) -> None:
    manifest = workspace / "shipway.yaml"
    _edit(manifest, rollout={"shadow_max_pending": 1_000_000})  # mirror every row, however late
    m = load_manifest(manifest)
    store = open_service_store(Location.of(m, manifest.resolve(), Settings(database_url=None)))
    try:
        v = (
            Registry(store)
            .add(
                "cancer",
                uri="python:tests.pilots.rules:lagging",
                flavor="python",
                contract=m.contract,
            )
            .version
        )
    finally:
        store.close()
    server = Server(manifest, NO_DB)
    server.wait_ready()
    assert server.client.post("/v1/rollout/shadow", json={"version": v}).status_code == 200
    stop = threading.Event()
    answered: list[str] = []

    def load(k: int) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/predict", json={"inputs": pilot.rows[(k * 7 + i) % 500]})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    answered.append(r.json()["id"])
                i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.stop()  # SIGINT while requests and shadow calls are in flight
    stop.set()
    for t in threads:
        t.join(30)
    assert server.proc.returncode in (0, 130)  # 130: exited on the SIGINT, after shutting down
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    db = sqlite3.connect(workspace / ".shipway" / "shipway.db")
    decided = {r[0] for r in db.execute("SELECT id FROM decisions WHERE error IS NULL")}
    shadowed = {
        r[0]
        for r in db.execute(
            "SELECT decision_id FROM shadow_decisions WHERE model_version = ?", (v,)
        )
    }
    db.close()
    assert len(answered) > 20
    assert set(answered) <= decided
    # every answered decision was mirrored and its shadow's answer (or timeout) logged
    assert decided == shadowed


# -- one owner per table, and layers ---------------------------------------------------------------


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_review_and_monitor_do_not_import_each_other() -> None:
    for pkg, other in (("review", "shipway.monitor"), ("monitor", "shipway.review")):
        for path in (SRC / pkg).rglob("*.py"):
            for module, _names in _imports(path):
                assert not module.startswith(other), f"{path.relative_to(SRC)} imports {module}"


def test_only_the_decisions_package_touches_the_decision_tables() -> None:
    owned = {"decisions", "shadow_decisions", "feedback", "rejections"}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("decisions", "store"):
            continue
        for module, names in _imports(path):
            if module == "shipway.store.tables":
                touched = owned & set(names)
                assert not touched, f"{rel} imports the table(s) {sorted(touched)}"


def test_each_source_table_has_one_owner_in_the_data_package() -> None:
    owners = {
        "data/ledger.py": {"source_runs", "source_files", "source_cursors", "quarantine"},
        "data/datasets.py": {"datasets"},
    }
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "store":
            continue
        for module, names in _imports(path):
            if module == "shipway.store.tables":
                for owner, owned in owners.items():
                    touched = owned & set(names)
                    assert rel.as_posix() == owner or not touched, (
                        f"{rel} imports the table(s) {sorted(touched)}, owned by {owner}"
                    )

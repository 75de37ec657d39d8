"""Governance over a real server with authentication on: the role-by-route matrix, keys,
OIDC tokens, the audit chain, PII, retention, the stop switch and secrets."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from shipway.api.access import OPEN, OPERATIONS, ROUTE_PERMISSIONS, roles_allowed
from shipway.govern import audit
from shipway.govern.roles import ROLES
from shipway.store import open_store
from tests.conftest import Pilot, free_port, run_cli

SECRET = "0123456789abcdef-test-secret"
PROD = {"SHIPWAY_DATABASE_URL": "", "SHIPWAY_DEV_MODE": "", "SHIPWAY_SECRET_KEY": SECRET}


def cli(*args: str, key: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(PROD)
    env["SHIPWAY_API_KEY"] = key or ""
    return run_cli(*args, env=env, timeout=timeout)


def make_key(manifest: Path, role: str, admin: str | None) -> str:
    res = cli(
        "keys", "create", "--name", f"{role}-key", "--role", role, "-m", str(manifest), key=admin
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture
def keyed(workspace: Path) -> dict[str, str]:
    """An admin key made while the store had none (bootstrap), then one key per role."""
    manifest = workspace / "shipway.yaml"
    admin = make_key(manifest, "admin", None)
    keys = {"admin": admin}
    for role in ROLES:
        if role != "admin":
            keys[role] = make_key(manifest, role, admin)
    return keys


def _fill(path: str, decision_id: str) -> str:
    return (
        path.replace("{decision_id}", decision_id)
        .replace("{move}", "step")
        .replace("{key_id}", "000000000000")
        .replace("{model}", "cancer")
        .replace("{version}", "1")
    )


def _body(method: str, path: str, row: dict[str, Any]) -> Any:
    if path == "/v1/predict":
        return {"inputs": row}
    if path == "/v1/keys":
        return {"name": "x", "role": "nonsense"}
    if method == "POST":
        return {}
    return None


def _code(path: str, r: httpx.Response) -> str:
    """The stable error code: V2 routes answer with the protocol's body (``error`` a string,
    ``code`` beside it), every other route with Shipway's."""
    body = r.json()
    return str(body["code"] if path.startswith("/v2") else body["error"]["code"])


def test_every_route_by_every_role(
    workspace: Path, pilot: Pilot, keyed: dict[str, str], start_server: Any
) -> None:
    server = start_server(workspace / "shipway.yaml", PROD)
    c = server.client
    hdr = {r: {"Authorization": f"Bearer {k}"} for r, k in keyed.items()}
    row = pilot.rows[0]
    did = c.post("/v1/predict", json={"inputs": row}, headers=hdr["predictor"]).json()["id"]
    for method, path, perms in ROUTE_PERMISSIONS:
        url = _fill(path, did)
        body = _body(method, path, row)
        anon = c.request(method, url, json=body)
        if OPEN in perms or OPERATIONS in perms:
            assert anon.status_code < 500 and anon.status_code not in (401, 403), (path, anon)
            continue
        assert anon.status_code == 401, (method, path, anon.status_code)
        assert _code(path, anon) == "unauthorized"
        assert anon.headers["www-authenticate"].startswith("Bearer")
        allowed = set(roles_allowed(perms))
        for role in ROLES:
            r = c.request(method, url, json=body, headers=hdr[role])
            if role in allowed:
                assert r.status_code not in (401, 403) and r.status_code < 500, (
                    method,
                    path,
                    role,
                    r.status_code,
                    r.text,
                )
            else:
                assert r.status_code == 403, (method, path, role, r.status_code)
                assert _code(path, r) == "forbidden"
    # the table the walk used covers every route the service documents (none is left to the
    # fail-closed default by accident)
    table = {(m, p) for m, p, _perms in ROUTE_PERMISSIONS}
    documented = {
        (m.upper(), p) for p, ops in c.get("/openapi.json").json()["paths"].items() for m in ops
    }
    assert documented <= table, documented - table
    # finer rules inside handlers: promotion needs approver; viewers see no inputs
    assert c.post("/v1/rollout/promote", json={}, headers=hdr["operator"]).status_code == 403
    assert c.post("/v1/rollout/promote", json={}, headers=hdr["approver"]).status_code == 409
    assert "inputs" not in c.get(f"/v1/decisions/{did}", headers=hdr["viewer"]).json()
    assert c.get(f"/v1/decisions/{did}", headers=hdr["operator"]).json()["inputs"] == row
    # unknown routes fail closed: credentials first, then 404
    assert c.get("/v1/nothing-here").status_code == 401
    assert c.get("/v1/nothing-here", headers=hdr["admin"]).status_code == 404
    assert c.get("/readyz").json()["auth"] == "on"


def test_revoked_and_expired_keys_are_refused(
    workspace: Path, pilot: Pilot, keyed: dict[str, str], start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    server = start_server(manifest, PROD)
    c = server.client
    admin = {"Authorization": f"Bearer {keyed['admin']}"}
    made = c.post("/v1/keys", json={"name": "app", "role": "predictor"}, headers=admin)
    assert made.status_code == 201
    key, key_id = made.json()["key"], made.json()["id"]
    use = {"Authorization": f"Bearer {key}"}
    assert c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=use).status_code == 200
    assert c.delete(f"/v1/keys/{key_id}", headers=admin).status_code == 200
    refused = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=use)
    assert refused.status_code == 401  # the very next request
    listed = c.get("/v1/keys", headers=admin).json()["keys"]
    assert all("key" not in k and "secret" not in str(k) for k in listed)

    # revoked from the CLI (another process): refused within the server's poll interval
    other = make_key(manifest, "predictor", keyed["admin"])
    other_id = other.split("_")[1]
    use2 = {"X-API-Key": other}
    deadline = time.monotonic() + 5  # a key made elsewhere works within a poll interval
    status = 401
    while status == 401 and time.monotonic() < deadline:
        status = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=use2).status_code
    assert status == 200
    assert cli("keys", "revoke", other_id, "-m", str(manifest), key=keyed["admin"]).returncode == 0
    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=use2).status_code
    assert status == 401

    short = cli(
        "keys",
        "create",
        "--name",
        "brief",
        "--role",
        "viewer",
        "--expires",
        "1s",
        "-m",
        str(manifest),
        key=keyed["admin"],
    ).stdout.strip()
    time.sleep(1.5)
    assert c.get("/v1/service", headers={"Authorization": f"Bearer {short}"}).status_code == 401
    # the CLI refuses state changes without a key once keys exist, and with the wrong role
    res = cli("rollout", "rollback", "-m", str(manifest))
    assert res.returncode != 0 and "SHIPWAY_API_KEY" in res.stderr
    res = cli("stop", "--reason", "x", "-m", str(manifest), key=keyed["operator"])
    assert res.returncode != 0 and "approver" in res.stderr


def _jwks(tmp_path: Path) -> tuple[Any, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "test-1", "use": "sig", "alg": "RS256"})
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [jwk]}))
    return private, path


def test_oidc_tokens_verified_and_mapped_to_roles(
    workspace: Path, pilot: Pilot, tmp_path: Path, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    private, jwks = _jwks(tmp_path)
    data = yaml.safe_load(manifest.read_text())
    data["auth"] = {
        "oidc": {
            "issuer": "https://id.example.test",
            "audience": "shipway-cancer",
            "jwks": str(jwks),
            "roles_claim": "realm.groups",
            "role_map": {"ml-ops": "operator"},
        }
    }
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    server = start_server(manifest, PROD)
    c = server.client

    def token(groups: list[str], **over: Any) -> str:
        claims = {
            "iss": "https://id.example.test",
            "aud": "shipway-cancer",
            "sub": "ana",
            "exp": int(time.time()) + 300,
            "realm": {"groups": groups},
            **over,
        }
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "test-1"})

    def call(tok: str) -> httpx.Response:
        return c.post(
            "/v1/predict",
            json={"inputs": pilot.rows[0]},
            headers={"Authorization": f"Bearer {tok}"},
        )

    ok = call(token(["predictor"]))
    assert ok.status_code == 200
    assert (
        c.get(
            f"/v1/decisions/{ok.json()['id']}",
            headers={"Authorization": f"Bearer {token(['ml-ops'])}"},
        ).json()["caller"]
        == "oidc:ana"
    )
    expired = call(token(["predictor"], exp=int(time.time()) - 600))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    wrong_aud = call(token(["predictor"], aud="another-service"))
    assert wrong_aud.status_code == 401 and "audience" in wrong_aud.json()["error"]["message"]
    head, payload, sig = token(["predictor"]).split(".")
    forged = orjson.loads(jwt.utils.base64url_decode(payload))
    forged["realm"]["groups"] = ["admin"]
    tampered = ".".join([head, jwt.utils.base64url_encode(orjson.dumps(forged)).decode(), sig])
    assert call(tampered).status_code == 401
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = jwt.encode(
        {
            "iss": "https://id.example.test",
            "aud": "shipway-cancer",
            "exp": int(time.time()) + 300,
            "realm": {"groups": ["admin"]},
        },
        other_key,
        algorithm="RS256",
        headers={"kid": "test-1"},
    )
    assert call(foreign).status_code == 401
    # the mapped group is an operator: may read, may not predict
    op = {"Authorization": f"Bearer {token(['ml-ops'])}"}
    assert c.get("/v1/rollout", headers=op).status_code == 200
    assert c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=op).status_code == 403


def test_audit_chain_detects_an_edited_or_deleted_event(database_url: str, tmp_path: Path) -> None:
    store = open_store(database_url, tmp_path / "art")
    try:
        for i in range(6):
            audit.record(
                store.engine,
                actor=f"user{i}",
                action="test.move",
                target="svc",
                after={"i": i},
                reason="because",
            )
        assert audit.verify(store.engine).ok
        assert audit.verify(store.engine).checked == 6
        key = SECRET.encode()
        cp = audit.checkpoint(store.engine, key)
        assert audit.check_checkpoint(store.engine, key, cp).ok
        assert not audit.check_checkpoint(store.engine, b"another-secret-entirely", cp).ok
        from sqlalchemy import text

        with store.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 4"))
        res = audit.verify(store.engine)
        assert not res.ok and res.broken_seq == 4 and "changed" in res.problem
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET actor = 'user3' WHERE seq = 4"))
            conn.execute(text("DELETE FROM audit_events WHERE seq = 2"))
        res = audit.verify(store.engine)
        assert not res.ok and res.broken_seq == 2 and "missing" in res.problem
        # the checkpoint taken before the deletion says so too
        assert "event 2 is missing" in audit.check_checkpoint(store.engine, key, cp).problem
    finally:
        store.close()


def test_audit_records_state_changes_and_cli_verify_names_the_broken_row(
    workspace: Path, keyed: dict[str, str]
) -> None:
    manifest = workspace / "shipway.yaml"
    res = cli("stop", "--reason", "incident 42", "-m", str(manifest), key=keyed["approver"])
    assert res.returncode == 0, res.stderr
    assert cli("resume", "-m", str(manifest), key=keyed["approver"]).returncode == 0
    listed = cli("audit", "list", "--json", "-m", str(manifest)).stdout.splitlines()
    actions = [orjson.loads(line)["action"] for line in listed]
    assert actions[0] == "model.add"
    assert actions.count("key.create") == len(ROLES)
    assert actions[-2:] == ["rollout.stop", "rollout.resume"]
    stop_event = orjson.loads(listed[-2])
    assert stop_event["actor"] == "key:approver-key" and stop_event["reason"] == "incident 42"
    ok = cli("audit", "verify", "-m", str(manifest))
    assert ok.returncode == 0 and f"{len(actions)} events" in ok.stdout
    db = sqlite3.connect(workspace / ".shipway" / "shipway.db")
    db.execute(
        "UPDATE audit_events SET reason = 'nothing happened' WHERE seq = ?", (len(actions) - 1,)
    )
    db.commit()
    db.close()
    bad = cli("audit", "verify", "-m", str(manifest))
    assert bad.returncode == 1 and f"broken at event {len(actions) - 1}" in bad.stderr


def test_pii_never_reaches_the_log_or_an_export(tmp_path: Path, start_server: Any) -> None:
    import csv

    data = tmp_path / "contacts.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "phone", "name", "amount", "risk"])
        for i in range(40):
            w.writerow(
                [
                    f"user{i}@example.com",
                    f"+44 7700 9{i:05d}",
                    f"Person {i}",
                    100 + 25 * i,
                    "high" if 100 + 25 * i > 500 else "low",
                ]
            )
    res = run_cli(
        "init",
        "--model",
        "python:tests.pilots.contacts:predict",
        "--data",
        str(data),
        "--target",
        "risk",
        "--dir",
        str(tmp_path / "svc"),
        env={"SHIPWAY_DATABASE_URL": ""},
    )
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "svc" / "shipway.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec["pii"] = {"email": "hash", "phone": "mask", "name": "drop"}
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(manifest, {"SHIPWAY_DATABASE_URL": "", "SHIPWAY_SECRET_KEY": SECRET})
    rows = [
        {"email": "ana@example.com", "phone": "+44 7700 912345", "name": "Ana Lima", "amount": 900},
        {"email": "ana@example.com", "phone": "+44 7700 900000", "name": "Ana Lima", "amount": 100},
    ]
    out = server.client.post("/v1/predict", json={"inputs": rows}).json()["decisions"]
    assert [d["output"] for d in out] == ["high", "low"]  # the model saw the clear values
    db = sqlite3.connect(tmp_path / "svc" / ".shipway" / "shipway.db")
    stored = [orjson.loads(r[0]) for r in db.execute("SELECT inputs FROM decisions")]
    raw = b"".join(r[0].encode() for r in db.execute("SELECT inputs FROM decisions"))
    db.close()
    for clear in (b"ana@example.com", b"912345", b"Ana Lima", b"Lima"):
        assert clear not in raw
    assert stored[0]["email"] == stored[1]["email"] and stored[0]["email"].startswith("hmac:")
    assert stored[0]["phone"].endswith("2345") and "*" in stored[0]["phone"]
    assert "name" not in stored[0] and stored[0]["amount"] == 900
    for fmt in ("jsonl", "csv"):
        exported = run_cli(
            "decisions", "export", str(manifest), "--format", fmt, env={"SHIPWAY_DATABASE_URL": ""}
        ).stdout
        assert "ana@example.com" not in exported and "Ana Lima" not in exported
        assert "hmac:" in exported


def test_retention_purge_removes_exactly_what_is_past_it(database_url: str, tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from shipway.decisions import DecisionLog
    from shipway.govern.retention import purge
    from shipway.manifest import RetentionSpec
    from shipway.store.tables import decisions, rejections

    store = open_store(database_url, tmp_path / "art")
    now = time.time()
    day = 86400.0
    ages = [1, 10, 29.9, 30.1, 45, 400]
    log = DecisionLog(store.engine)
    log.start()
    try:
        log.write_sync(
            [
                {
                    "id": f"d{i}",
                    "ts": now - a * day,
                    "service": "svc",
                    "model_version": 1,
                    "route": "champion",
                    "inputs": {"x": i},
                    "output": 1,
                    "confidence": 0.5,
                    "latency_ms": 1.0,
                    "caller": None,
                }
                for i, a in enumerate(ages)
            ]
            + [
                {
                    "id": "other",
                    "ts": now - 400 * day,
                    "service": "other",
                    "model_version": 1,
                    "route": "champion",
                    "inputs": {},
                    "output": 1,
                    "confidence": 0.5,
                    "latency_ms": 1.0,
                    "caller": None,
                }
            ]
        )
    finally:
        log.stop()
    with store.engine.begin() as conn:  # refused requests, 5 and 40 days old
        conn.execute(
            rejections.insert(),
            [
                {"ts": now - a * day, "service": "svc", "request_id": f"r{a}", "rule": "range"}
                for a in (5, 40)
            ],
        )
    try:
        res = purge(store.engine, "svc", RetentionSpec(decisions="30d"), actor="t", now=now)
        assert res["removed"] == {"decisions": 3, "rejections": 1, "quarantine": 0}
        with store.engine.connect() as conn:
            kept = list(conn.execute(select(rejections.c.request_id)).scalars())
            assert kept == ["r5"]
        with store.engine.connect() as conn:
            left = set(conn.execute(select(decisions.c.id)).scalars())
            assert left == {"d0", "d1", "d2", "other"}  # another service keeps its own
            assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 4
        event = audit.events(store.engine, newest_first=True, limit=1)[0]
        assert event["action"] == "retention.purge" and event["after"]["removed"] == {
            "decisions": 3,
            "rejections": 1,
            "quarantine": 0,
        }
    finally:
        store.close()


def test_stop_switch_answers_the_declared_safe_behaviour(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec["stop"] = {"behavior": "default", "answer": {"output": 1, "confidence": None}}
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(manifest, {"SHIPWAY_DATABASE_URL": ""})
    c = server.client
    assert c.post("/v1/predict", json={"inputs": pilot.rows[0]}).json()["route"] == "champion"
    env = {"SHIPWAY_DATABASE_URL": "", "SHIPWAY_DEV_MODE": "1"}
    assert run_cli("stop", "--reason", "bad outputs", "-m", str(manifest), env=env).returncode == 0
    deadline = time.monotonic() + 10
    route = "champion"
    while route != "stopped" and time.monotonic() < deadline:
        route = c.post("/v1/predict", json={"inputs": pilot.rows[0]}).json()["route"]
    assert route == "stopped"
    body = c.post("/v1/predict", json={"inputs": pilot.rows[1]}).json()
    assert body["output"] == 1 and body["model_version"] is None
    assert "bad outputs" in c.get(f"/v1/decisions/{body['id']}").json()["reason"]
    assert c.get("/readyz").json()["stopped"] == "bad outputs"
    resumed = c.post("/v1/resume", json={"reason": "fixed"})
    assert resumed.status_code == 200
    assert c.post("/v1/predict", json={"inputs": pilot.rows[0]}).json()["route"] == "champion"
    # without a declared answer the stop switch is a 503
    stopped = c.post("/v1/stop", json={"reason": "again"})
    assert stopped.status_code == 200
    spec["stop"] = {"behavior": "error"}
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    server2 = start_server(manifest, {"SHIPWAY_DATABASE_URL": ""})
    r = server2.client.post("/v1/predict", json={"inputs": pilot.rows[0]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_stopped"


def test_production_mode_refuses_a_missing_or_default_secret(workspace: Path) -> None:
    manifest = workspace / "shipway.yaml"
    base = {**os.environ, "SHIPWAY_DATABASE_URL": "", "SHIPWAY_DEV_MODE": ""}
    for secret, says in (("", "no server secret"), ("changeme", "well-known default")):
        res = subprocess.run(
            [sys.executable, "-m", "shipway", "serve", str(manifest), "--port", str(free_port())],
            env={**base, "SHIPWAY_SECRET_KEY": secret},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode != 0 and says in " ".join(res.stderr.split())
    from shipway.settings import Settings

    s = Settings(secret_key=SECRET, database_url="postgresql+psycopg://u:hunter2@h/db")
    assert SECRET not in repr(s) and "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_dev_mode_says_so(workspace: Path, start_server: Any) -> None:
    server = start_server(workspace / "shipway.yaml", {"SHIPWAY_DATABASE_URL": ""})
    assert "development mode" in server.client.get("/readyz").json()["auth"]
    assert "DEVELOPMENT MODE" in server.output()


SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_schemathesis_finds_no_server_error_and_no_route_open_without_auth(
    workspace: Path, keyed: dict[str, str], start_server: Any, tmp_path: Path
) -> None:
    server = start_server(workspace / "shipway.yaml", PROD)
    url = f"{server.base}/openapi.json"
    common = [
        "--max-examples",
        "8",
        "--generation-deterministic",
        "--request-timeout",
        "10",
        "--phases",
        "examples,coverage,fuzzing",
        "--no-color",
    ]
    runs = {
        # with credentials: no 5xx, and each protected operation refuses the same request
        # sent without them (ignored_auth)
        "admin": [
            "--checks",
            "not_a_server_error,ignored_auth",
            "-H",
            f"Authorization: Bearer {keyed['admin']}",
        ],
        "anonymous": ["--checks", "not_a_server_error"],
    }
    n_ops = sum(len(ops) for ops in httpx.get(url).json()["paths"].values())
    for name, extra in runs.items():
        res = subprocess.run(
            [str(SCHEMATHESIS), "run", url, *common, *extra],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert res.returncode == 0, f"{name}:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
        assert f"Tested: {n_ops}" in res.stdout, res.stdout[-2000:]  # every operation exercised
    # without credentials no protected operation in the schema answers 2xx
    schema = httpx.get(url).json()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            concrete = path.replace("{model}", "cancer")
            for part in ("{decision_id}", "{move}", "{key_id}", "{version}"):
                concrete = concrete.replace(part, "1")
            r = httpx.request(method.upper(), server.base + concrete, json={})
            if op.get("security"):
                assert r.status_code == 401, (method, path, r.status_code)

"""Findings of an attacker's review of the running service, each reproduced: data exposure,
authorization, availability, errors that must be 4xx, integrity. Real servers on 127.0.0.1,
real stores; the V2 decoder also under a property-based fuzzer."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipway.api import v2
from shipway.errors import BadRequest
from tests.conftest import Pilot, edit_sections

NO_DB = {"SHIPWAY_DATABASE_URL": ""}


_edit = edit_sections  # the shared helper, under this module's short name


def _v2_body(pilot: Pilot, n: int = 1) -> dict[str, Any]:
    names = list(pilot.rows[0])
    return {
        "inputs": [
            {
                "name": k,
                "datatype": "FP64",
                "shape": [n],
                "data": [pilot.rows[i][k] for i in range(n)],
            }
            for k in names
        ]
    }


# -- 13: V2 requests that are wrong get 4xx, never 500 --------------------------------------------


def test_malformed_v2_requests_are_refused_with_4xx(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    server = start_server(manifest)
    c = server.client
    url = "/v2/models/cancer/infer"
    good = _v2_body(pilot)
    first, rest = good["inputs"][0], good["inputs"][1:]
    cases: dict[str, Any] = {
        "shape is a number": {"inputs": [{**first, "shape": 5}, *rest]},
        "parameters is a string": {**good, "parameters": "binary"},
        "tensor parameters is a string": {"inputs": [{**first, "parameters": "x"}, *rest]},
        "outputs is not a list": {**good, "outputs": "output"},
        "output request without a name": {**good, "outputs": [{"nam": "output"}]},
        "unknown output": {**good, "outputs": [{"name": "secret"}]},
        "binary flag not a bool": {**good, "parameters": {"binary_data_output": "yes"}},
        "nested objects as data": {"inputs": [{**first, "data": [{"a": 1}]}, *rest]},
        "negative dimension": {"inputs": [{**first, "shape": [-1]}, *rest]},
    }
    for what, body in cases.items():
        r = c.post(url, json=body)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        assert r.json()["code"] in ("bad_request", "contract_violation"), (what, r.text)
    # binary tensors: a 7-byte FP64 tensor, invalid UTF-8 in BYTES
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": next(iter(pilot.rows[0])),
                    "datatype": "FP64",
                    "shape": [1],
                    "parameters": {"binary_data_size": 7},
                }
            ]
        }
    )
    r = c.post(
        url,
        content=head.encode() + b"\x00" * 7,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "whole number" in r.json()["error"], r.text
    bad_utf8 = struct.pack("<I", 2) + b"\xff\xfe"
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(bad_utf8)},
                }
            ]
        }
    )
    r = c.post(
        url,
        content=head.encode() + bad_utf8,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"], r.text
    assert c.post(url, json=good).status_code == 200  # and the service is fine


def test_v2_rows_held_for_review_answer_with_their_status(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    _edit(
        manifest,
        review={"policies": [{"name": "big", "when": "inputs.`mean radius` > 15", "mode": "hold"}]},
    )
    text = manifest.read_text().replace("inputs.`mean radius` > 15", "confidence < 2")
    manifest.write_text(text)
    server = start_server(manifest)
    r = server.client.post("/v2/models/cancer/infer", json=_v2_body(pilot, 3))
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["status"] == ["pending_review"] * 3
    for did in out["decision_id"]:
        assert server.client.get(f"/v1/decisions/{did}").json()["status"] == "pending_review"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5))
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["a", "b", "x"]), _scalars),
        "shape": st.one_of(st.lists(st.integers(-2, 5), max_size=3), _json),
        "datatype": st.one_of(
            st.sampled_from(["FP64", "FP32", "INT64", "BOOL", "BYTES", "U8"]), _scalars
        ),
    },
    optional={
        "data": _json,
        "parameters": st.one_of(
            _json,
            st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-3, 40), _scalars)}),
        ),
    },
)
_body = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(_tensor, max_size=3), _json)},
    optional={
        "outputs": st.one_of(
            _json,
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.sampled_from(["output", "status", "nope"]), _scalars)},
                    optional={"parameters": _json},
                ),
                max_size=3,
            ),
        ),
        "parameters": _json,
        "id": _scalars,
    },
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_body, binary=st.one_of(st.none(), st.binary(max_size=48)))
def test_the_v2_decoder_refuses_anything_malformed_with_bad_request(
    body: dict[str, Any], binary: bytes | None
) -> None:
    names = ["a", "b"]
    view = memoryview(binary) if binary is not None else None
    try:
        rows = v2.records(body, names, view)
        v2.response_options(body)
    except BadRequest:
        return
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)


# -- servers with authentication on -------------------------------------------------------------

SECRET = "0123456789abcdef-test-secret"
PROD = {"SHIPWAY_DATABASE_URL": "", "SHIPWAY_DEV_MODE": "", "SHIPWAY_SECRET_KEY": SECRET}


def _cli(*args: str, key: str | None = None) -> Any:
    from tests.conftest import run_cli

    return run_cli(*args, env={**PROD, "SHIPWAY_API_KEY": key or ""})


def _key(manifest: Path, role: str, admin: str | None, name: str | None = None) -> str:
    res = _cli(
        "keys",
        "create",
        "--name",
        name or f"{role}-key",
        "--role",
        role,
        "-m",
        str(manifest),
        key=admin,
    )
    assert res.returncode == 0, res.stderr
    return str(res.stdout.strip().splitlines()[-1])


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CANARIES = {"email": "canary.one@leak.test", "phone": "+44 7700 955511", "name": "Zelda Canary"}


@pytest.fixture
def contacts(tmp_path: Path) -> Path:
    """A service whose inputs are personal (email, phone, name), with pii treatments."""
    import csv

    from tests.conftest import run_cli

    data = tmp_path / "contacts.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "phone", "name", "amount", "risk"])
        for i in range(40):
            amount = 100 + 25 * i
            w.writerow(
                [
                    f"user{i}@example.com",
                    f"+44 7700 9{i:05d}",
                    f"Person {i}",
                    amount,
                    "high" if amount > 500 else "low",
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
        "--name",
        "contacts",
        "--dir",
        str(tmp_path / "svc"),
        env=NO_DB,
    )
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "svc" / "shipway.yaml"
    _edit(manifest, pii={"email": "hash", "phone": "mask", "name": "drop"})
    return manifest


def test_pii_never_leaks_through_error_text(contacts: Path, start_server: Any) -> None:
    """1: model errors quoting raw values are treated before they are stored, returned,
    exported or shown; roles that may not read inputs see error codes only."""
    from shipway.models import Registry
    from shipway.settings import Settings
    from shipway.store.location import Location, open_service_store

    m = __import__("shipway.manifest", fromlist=["load_manifest"]).load_manifest(contacts)
    store = open_service_store(Location.of(m, contacts.resolve(), Settings(database_url=None)))
    try:
        v = (
            Registry(store)
            .add(
                "contacts",
                uri="python:tests.pilots.contacts:leaky",
                flavor="python",
                contract=m.contract,
            )
            .version
        )
    finally:
        store.close()
    _edit(
        contacts,
        model={"version": v, "uri": "python:tests.pilots.contacts:leaky"},
        guards={"fallback": [{"default": {"output": "low", "confidence": None}}]},
    )
    admin = _key(contacts, "admin", None)
    predictor, viewer = _key(contacts, "predictor", admin), _key(contacts, "viewer", admin)
    server = start_server(contacts, PROD)
    c = server.client
    row = {**CANARIES, "amount": 900}
    fell_back = c.post("/v1/predict", json={"inputs": row}, headers=_auth(predictor))
    assert fell_back.status_code == 200 and fell_back.json()["route"] == "default"
    _edit(contacts, guards={"fallback": []})
    server2 = start_server(contacts, PROD)
    failed = server2.client.post("/v1/predict", json={"inputs": row}, headers=_auth(predictor))
    assert failed.status_code == 503
    texts = [failed.text]
    db = sqlite3.connect(contacts.parent / ".shipway" / "shipway.db")
    texts += [str(r) for r in db.execute("SELECT error, reason, inputs FROM decisions")]
    db.close()
    texts.append(_cli("decisions", "export", "-m", str(contacts), key=admin).stdout)
    did = fell_back.json()["id"]
    as_viewer = c.get(f"/v1/decisions/{did}", headers=_auth(viewer)).json()
    as_admin = c.get(f"/v1/decisions/{did}", headers=_auth(admin)).json()
    texts += [json.dumps(as_viewer), json.dumps(as_admin)]
    for text in texts:
        for raw in (*CANARIES.values(), "Zelda", "955511"[:-1] + "1"):
            assert raw not in text, (raw, text[:300])
    assert "hmac:" in as_admin["reason"]  # the error text kept the treated value
    assert as_viewer["reason"].startswith("withheld") and "inputs" not in as_viewer
    failed_id = [
        d
        for d in _cli("decisions", "export", "-m", str(contacts), key=admin).stdout.splitlines()
        if '"error":"model' in d or '"error": "model' in d
    ]
    assert failed_id  # the failed row is logged, with its error code first


def test_held_decisions_show_their_caller_the_status_only(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """2: while a person decides, the caller sees no model answer or confidence."""
    manifest = workspace / "shipway.yaml"
    _edit(manifest, review={"policies": [{"name": "all", "sample": 1.0, "mode": "hold"}]})
    admin = _key(manifest, "admin", None)
    predictor, reviewer = _key(manifest, "predictor", admin), _key(manifest, "reviewer", admin)
    server = start_server(manifest, PROD)
    c = server.client
    held = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(predictor)).json()
    seen = c.get(held["status_url"], headers=_auth(predictor)).json()
    assert seen["status"] == "pending_review" and seen["output"] is None
    assert "model_output" not in seen and "confidence" not in seen
    assert seen["review"]["final_output"] is None
    assert c.get(held["status_url"], headers=_auth(reviewer)).json()["model_output"] in (0, 1)


def test_webhook_urls_and_stop_reasons_are_not_shown_to_anyone(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """3 and 4: notification targets show their host only below admin; /readyz says
    "stopped" to anyone, and the reason only with credentials."""
    manifest = workspace / "shipway.yaml"
    hook = "http://127.0.0.1:9/hook?token=s3cr3t-in-the-url"
    _edit(
        manifest,
        monitor={
            "schedule": False,
            "min_rows": 1,
            "webhooks": [{"url": hook}],
            "alerts": [{"name": "always", "when": "n >= 0"}],
        },
    )
    admin = _key(manifest, "admin", None)
    viewer, approver = _key(manifest, "viewer", admin), _key(manifest, "approver", admin)
    server = start_server(manifest, PROD)
    c = server.client
    assert c.post("/v1/monitor/run", headers=_auth(admin)).status_code == 200
    for path in ("/v1/alerts", "/v1/outbox"):
        assert "s3cr3t" not in c.get(path, headers=_auth(viewer)).text
    assert "s3cr3t" in c.get("/v1/outbox", headers=_auth(admin)).text
    reason = "model leaks, incident 4411"
    assert c.post("/v1/stop", json={"reason": reason}, headers=_auth(approver)).status_code == 200
    anon = c.get("/readyz").json()
    assert anon["stopped"] is True and "4411" not in c.get("/readyz").text
    assert c.get("/readyz", headers=_auth(viewer)).json()["stopped"] == reason


def test_reference_statistics_hold_no_raw_personal_values(
    contacts: Path, start_server: Any
) -> None:
    """5: the training values kept with a model version are treated like the log's."""
    start_server(contacts, {"SHIPWAY_DATABASE_URL": "", "SHIPWAY_SECRET_KEY": SECRET})
    db = sqlite3.connect(contacts.parent / ".shipway" / "shipway.db")
    refs = [r[0] for r in db.execute("SELECT reference FROM model_versions")]
    actions = [r[0] for r in db.execute("SELECT action FROM audit_events")]
    db.close()
    assert refs and all("@example.com" not in r and "Person 1" not in r for r in refs)
    assert "hmac:" in refs[0] and "model.pii" in actions


def test_an_operator_cannot_promote_by_another_name(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """6: a canary at 100% (or past the largest step) or a step to it needs an approver."""
    manifest = workspace / "shipway.yaml"
    _edit(manifest, rollout={"steps": [10, 50, 100], "min_requests": 1})
    assert (
        _cli(
            "models", "add", "--model", "python:tests.pilots.rules:predict", "-m", str(manifest)
        ).returncode
        == 0
    )
    admin = _key(manifest, "admin", None)
    operator, approver = _key(manifest, "operator", admin), _key(manifest, "approver", admin)
    server = start_server(manifest, PROD)
    c = server.client
    for body in (
        {"version": 2, "percent": 100, "force": False, "reason": "x"},
        {"version": 2, "percent": 100, "force": False},
    ):
        r = c.post("/v1/rollout/canary", json=body, headers=_auth(operator))
        assert r.status_code in (403, 409), r.text
        if r.status_code == 403:
            assert "approve" in r.json()["error"]["message"]
    cli = _cli(
        "rollout",
        "canary",
        "2",
        "--percent",
        "100",
        "--force",
        "--reason",
        "x",
        "-m",
        str(manifest),
        key=operator,
    )
    assert cli.returncode != 0 and "approver" in cli.stderr
    ok = c.post(
        "/v1/rollout/canary",
        json={"version": 2, "percent": 50, "force": True, "reason": "trial"},
        headers=_auth(approver),
    )
    assert ok.status_code == 200, ok.text
    for _ in range(3):
        c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(admin))
    step = c.post("/v1/rollout/step", json={"force": False}, headers=_auth(operator))
    assert step.status_code == 403 and "100%" in step.json()["error"]["message"]


def test_callers_label_their_own_decisions_and_reviewers_outrank_them(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """7: a predictor labels only what its key asked; a labeler's (or reviewer's) label is
    the one that counts over a caller's later one."""
    from shipway.decisions import labels
    from shipway.store import open_store

    manifest = workspace / "shipway.yaml"
    admin = _key(manifest, "admin", None)
    alice, bob = (
        _key(manifest, "predictor", admin, "alice"),
        _key(manifest, "predictor", admin, "bob"),
    )
    labeler = _key(manifest, "labeler", admin)
    server = start_server(manifest, PROD)
    c = server.client
    mine = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(alice)).json()
    theirs = c.post("/v1/predict", json={"inputs": pilot.rows[1]}, headers=_auth(bob)).json()
    r = c.post("/v1/feedback", json={"id": theirs["id"], "label": 1}, headers=_auth(alice))
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["rule"] == "not_yours"
    assert (
        c.post(
            "/v1/feedback", json={"id": mine["id"], "label": 0}, headers=_auth(labeler)
        ).status_code
        == 201
    )
    assert (
        c.post(
            "/v1/feedback", json={"id": mine["id"], "label": 1}, headers=_auth(alice)
        ).status_code
        == 201
    )  # newer, but a caller's
    store = open_store(f"sqlite:///{workspace / '.shipway' / 'shipway.db'}", workspace / "a")
    try:
        assert labels.latest(store.engine, [mine["id"]]) == {mine["id"]: 0}
        rows = (
            store.engine.connect()
            .exec_driver_sql("SELECT actor, role, rank FROM feedback ORDER BY seq")
            .fetchall()
        )
    finally:
        store.close()
    assert [tuple(r) for r in rows] == [
        ("key:labeler-key", "labeler", 2),
        ("key:alice", "predictor", 1),
    ]


def test_actors_carry_their_kind_and_system_names_cannot_be_claimed(
    workspace: Path, pilot: Pilot, tmp_path: Path, start_server: Any
) -> None:
    """8: an OIDC subject named like Shipway's own jobs is still recorded as a token."""
    import time

    import jwt
    import orjson
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    (tmp_path / "jwks.json").write_bytes(orjson.dumps({"keys": [jwk]}))
    manifest = workspace / "shipway.yaml"
    _edit(
        manifest,
        auth={
            "oidc": {
                "issuer": "https://id.test",
                "audience": "svc",
                "jwks": str(tmp_path / "jwks.json"),
            }
        },
        retention={"decisions": "1d"},
    )
    admin = _key(manifest, "admin", None)
    server = start_server(manifest, PROD)
    claims = {
        "iss": "https://id.test",
        "aud": "svc",
        "sub": "system:retention",
        "exp": int(time.time()) + 300,
        "roles": ["operator"],
    }
    tok = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})
    assert server.client.post("/v1/retention/purge", headers=_auth(tok)).status_code == 200
    bad_roles = jwt.encode(
        {**claims, "roles": 5}, private, algorithm="RS256", headers={"kid": "k1"}
    )
    r = server.client.post("/v1/retention/purge", headers=_auth(bad_roles))
    assert r.status_code == 401 and "roles" in r.json()["error"]["message"]  # 14: not a 500
    events = server.client.get("/v1/audit", headers=_auth(admin)).json()["events"]
    actors = {e["actor"] for e in events if e["action"] == "retention.purge"}
    assert "oidc:system:retention" in actors
    assert all(
        a.split(":", 1)[0] in ("key", "oidc", "cli", "system", "dev")
        for a in {e["actor"] for e in events}
    )


class Provider:
    """An identity provider's JWKS endpoint the test controls: its keys, its delay, its hits."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.body = b'{"keys": []}'
        self.delay = 0.0
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                import time

                outer.hits += 1
                time.sleep(outer.delay)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self, *pairs: tuple[str, Any]) -> None:
        import jwt
        import orjson

        out = []
        for kid, private in pairs:
            jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
            out.append(jwk)
        self.body = orjson.dumps({"keys": out})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_jwks_url_is_never_fetched_on_the_request_path(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """9 and 10: forged tokens with unknown key ids neither stall the server nor make it fetch
    per request; a key the provider removes is refused after the next refresh."""
    import threading
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")
    provider = Provider()
    provider.keys(("old", old))
    try:
        manifest = workspace / "shipway.yaml"
        _edit(
            manifest,
            auth={
                "oidc": {
                    "issuer": "https://id.test",
                    "audience": "svc",
                    "jwks": provider.url,
                    "jwks_refresh": "2s",
                    "jwks_min_interval": "1s",
                    "jwks_timeout_s": 5,
                }
            },
        )
        server = start_server(manifest, PROD)
        c = server.client

        def token(kid: str, key: Any) -> str:
            claims = {
                "iss": "https://id.test",
                "aud": "svc",
                "sub": "ana",
                "exp": int(time.time()) + 300,
                "roles": ["predictor"],
            }
            return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

        good = token("old", old)
        assert (
            c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(good)).status_code
            == 200
        )
        provider.delay = 4.0  # a slow provider from now on
        hits = provider.hits
        stalls: list[float] = []

        def probe() -> None:
            for _ in range(10):
                t0 = time.monotonic()
                c.get("/healthz")
                stalls.append(time.monotonic() - t0)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        forged = token("unknown-kid", new)
        for _ in range(20):
            r = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(forged))
            assert r.status_code == 401
        prober.join()
        assert max(stalls) < 1.0, stalls  # a fetch on the loop stalled /healthz for seconds
        assert provider.hits - hits <= 2  # not one fetch per forged token
        provider.delay = 0.0
        provider.keys(("new", new))  # the provider drops the old key
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = c.post("/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(good))
            if r.status_code == 401:
                break
            time.sleep(0.3)
        assert r.status_code == 401 and "unknown key" in r.json()["error"]["message"]
        assert (
            c.post(
                "/v1/predict", json={"inputs": pilot.rows[0]}, headers=_auth(token("new", new))
            ).status_code
            == 200
        )
    finally:
        provider.close()


def test_metrics_and_errors_stay_bounded_whatever_callers_send(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """11 and 14: made-up field names do not become metric series; a deeply nested value in a
    refused row gets a 422 that summarises it, not a 500."""
    server = start_server(workspace / "shipway.yaml")
    c = server.client

    def series() -> int:
        text = c.get("/metrics").text
        return sum(
            1 for line in text.splitlines() if line.startswith("shipway_contract_violations_total")
        )

    before = series()
    for i in range(30):
        r = c.post("/v1/predict", json={"inputs": {**pilot.rows[0], f"made_up_{i}": 1}})
        assert r.status_code == 422
    assert series() <= before + 1  # one "(unknown)" series at most
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    r = c.post("/v1/predict", json={"inputs": {**pilot.rows[0], "mean radius": deep}})
    assert r.status_code == 422, r.text[:200]
    assert r.json()["error"]["fields"][0]["value"] == "<a list of 1 items>"


def test_rule_conditions_are_bounded_and_refused_at_load(workspace: Path) -> None:
    """12: expressions cannot exhaust memory or time, and a refused one names its line."""
    import time

    from shipway.errors import ManifestError
    from shipway.expr import Expression
    from shipway.manifest import load_manifest

    t0 = time.monotonic()
    assert Expression("'a' * 3000000000 == 'x'").test({}) is False  # null, not 3 GB
    big = " * ".join(["n"] * 25)
    assert Expression(big + " > 0").test({"n": 10**9}) is False  # past the bound: null
    assert time.monotonic() - t0 < 5
    manifest = workspace / "shipway.yaml"
    _edit(manifest, monitor={"alerts": [{"name": "huge", "when": " + ".join(["n"] * 3000)}]})
    line = next(i for i, t in enumerate(manifest.read_text().splitlines(), 1) if "n + n" in t)
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest)
    assert caught.value.problems[0].startswith(f"{manifest}:{line}: monitor.alerts.0.when:")


def test_scheduled_checkpoints_find_events_removed_from_the_end(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """15: deleting the newest events and moving the head back is found by audit verify."""
    from tests.conftest import run_cli

    manifest = workspace / "shipway.yaml"
    admin = _key(manifest, "admin", None)
    for role in ("viewer", "predictor", "operator"):
        _key(manifest, role, admin)
    _edit(manifest, audit={"checkpoint_every": "1s"})
    server = start_server(manifest, PROD)
    ckpt = workspace / "audit-checkpoints"
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not list(ckpt.glob("checkpoint-*.json")):
        time.sleep(0.2)
    assert list(ckpt.glob("checkpoint-*.json"))
    server.stop()
    ok = run_cli("audit", "verify", "-m", str(manifest), env=PROD)
    assert ok.returncode == 0 and "holds" in ok.stdout, ok.stdout + ok.stderr
    db = sqlite3.connect(workspace / ".shipway" / "shipway.db")
    (last,) = db.execute("SELECT max(seq) FROM audit_events").fetchone()
    (prev,) = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (last - 1,)).fetchone()
    db.execute("DELETE FROM audit_events WHERE seq = ?", (last,))
    db.execute("UPDATE audit_head SET seq = ?, hash = ?", (last - 1, prev))
    db.commit()
    db.close()
    bad = run_cli("audit", "verify", "-m", str(manifest), env=PROD)
    assert bad.returncode == 1 and "events were removed" in bad.stderr, bad.stderr
    # a checkpoint made by hand sees an edited event's content, not only its hash column
    cp = run_cli("audit", "checkpoint", "-m", str(manifest), env={**PROD, "SHIPWAY_API_KEY": admin})
    assert cp.returncode == 0
    (workspace / "cp.json").write_text(cp.stdout)
    db = sqlite3.connect(workspace / ".shipway" / "shipway.db")
    db.execute("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = 2")
    db.commit()
    db.close()
    check = run_cli(
        "audit",
        "checkpoint",
        "--check",
        str(workspace / "cp.json"),
        "-m",
        str(manifest),
        env={**PROD, "SHIPWAY_API_KEY": admin},
    )
    assert check.returncode == 1 and "event 2 differs" in check.stderr, check.stderr


def test_a_weak_server_secret_is_refused(workspace: Path) -> None:
    """17: sixteen of the same character is not a secret."""
    from tests.conftest import run_cli

    for weak in ("a" * 16, "abcabcabcabcabcabcabc"):
        res = run_cli(
            "serve",
            "-m",
            str(workspace / "shipway.yaml"),
            env={**PROD, "SHIPWAY_SECRET_KEY": weak},
            timeout=60,
        )
        assert res.returncode == 1 and "secrets.token_hex" in res.stderr, res.stderr


def test_cli_reads_check_the_key_like_the_http_routes(workspace: Path, pilot: Pilot) -> None:
    """18: with a key set, decisions export needs read_inputs and audit list needs read."""
    manifest = workspace / "shipway.yaml"
    admin = _key(manifest, "admin", None)
    viewer, predictor = _key(manifest, "viewer", admin), _key(manifest, "predictor", admin)
    refused = _cli("decisions", "export", "-m", str(manifest), key=viewer)
    assert refused.returncode == 1 and "decisions export needs" in refused.stderr
    assert _cli("decisions", "export", "-m", str(manifest), key=admin).returncode == 0
    refused = _cli("audit", "list", "-m", str(manifest), key=predictor)
    assert refused.returncode == 1 and "audit list needs" in refused.stderr
    assert _cli("audit", "list", "-m", str(manifest), key=viewer).returncode == 0


def test_an_mlflow_model_is_extracted_afresh_from_its_verified_artifact(
    workspace: Path, pilot: Pilot, tmp_path: Path
) -> None:
    """16: a model folder extracted earlier and edited since is never what gets loaded."""
    import warnings

    import joblib

    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    from shipway.manifest import load_manifest
    from shipway.models import Registry
    from shipway.models.formats import unpack_directory
    from shipway.settings import Settings
    from shipway.store.location import Location, open_service_store
    from tests.conftest import run_cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow_sklearn.save_model(
            joblib.load(pilot.model),
            str(tmp_path / "mlflow_model"),
            serialization_format=mlflow_sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    manifest = workspace / "shipway.yaml"
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "mlflow_model"), "-m", str(manifest), env=NO_DB
    )
    assert res.returncode == 0, res.stderr
    m = load_manifest(manifest)
    store = open_service_store(Location.of(m, manifest.resolve(), Settings(database_url=None)))
    try:
        reg = Registry(store)
        mv = reg.get("cancer", 2)
        data = store.artifacts.read_verified(mv.artifact_sha256)
        first = unpack_directory(data)
        pkl = next(first.rglob("model.pkl"))
        pkl.write_bytes(b"not a model")  # tampered after extraction
        second = unpack_directory(data)
        assert second != first
        assert next(second.rglob("model.pkl")).read_bytes() != b"not a model"
        rows = [tuple(r.values()) for r in pilot.rows[:20]]
        pred = reg.load(mv, m.contract, list(m.output.labels or []))
        assert len(pred.predict(rows).outputs) == 20
        assert oct(second.stat().st_mode & 0o777) == "0o700"
    finally:
        store.close()

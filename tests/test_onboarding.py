"""What a newcomer hits taking a pilot to a service: rules init proposes, `for` over distinct
windows, validate and manifest changes, JSON bodies on every route, canary and promote guarded
by alerts and step checks, the demo on a busy port, and the CLI's output."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipway.manifest import load_manifest
from tests.conftest import Pilot, edit_sections, free_port, run_cli

NO_DB = {"SHIPWAY_DATABASE_URL": ""}


_edit = edit_sections  # the shared helper, under this module's short name


def test_init_proposes_monitoring_from_the_pilots_own_score(workspace: Path) -> None:
    """3: error, drift and quality rules; the quality floor is the holdout accuracy less 0.05."""
    from shipway.models import Registry
    from shipway.settings import Settings
    from shipway.store.location import Location, open_service_store

    manifest = workspace / "shipway.yaml"
    m = load_manifest(manifest)
    rules = {r.name: r for r in m.monitor.alerts}
    assert set(rules) == {"errors", "input-drift", "quality"}
    store = open_service_store(Location.of(m, manifest.resolve(), Settings(database_url=None)))
    try:
        holdout = Registry(store).get("cancer", 1).metrics["holdout"]["accuracy"]
    finally:
        store.close()
    floor = float(rules["quality"].when.rsplit("<", 1)[1])
    assert floor == round(holdout - 0.05, 4)
    assert all("notify" in r.do for r in rules.values()) and m.monitor.webhooks == []


def test_for_counts_distinct_windows_and_the_report_shows_pending_rules(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """4: running the monitor twice over the same decisions does not fire a `for: 2` rule."""
    manifest = workspace / "shipway.yaml"
    _edit(
        manifest,
        monitor={
            "schedule": False,
            "window": "1h",
            "min_rows": 1,
            "alerts": [{"name": "busy", "when": "n >= 1", "for": 2}],
        },
    )
    server = start_server(manifest, NO_DB)
    for row in pilot.rows[:5]:
        server.client.post("/v1/predict", json={"inputs": row})
    first = server.client.post("/v1/monitor/run").json()
    second = server.client.post("/v1/monitor/run").json()
    assert first["alerts"] == [] and second["alerts"] == []
    assert second["alerts_pending"] == [{"rule": "busy", "windows": 1, "for": 2, "counted": False}]
    report = run_cli("monitor", "report", "-m", str(manifest), env=NO_DB)
    assert "busy[/]" not in report.stdout and "pending, 1 of 2 windows" in report.stdout


def test_validate_names_problems_and_a_server_says_what_differs(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """5: validate exits 1 with every problem and its line; serve warns when the manifest
    changes on disk and when the store's champion is not the manifest's version."""
    manifest = workspace / "shipway.yaml"
    ok = run_cli("validate", "-m", str(manifest), "--dev", env=NO_DB)
    assert ok.returncode == 0 and "valid" in ok.stdout
    text = manifest.read_text()
    manifest.write_text(text.replace("  window: 1h", "  window: 1 hour\n  colour: blue"))
    bad = run_cli("validate", "-m", str(manifest), "--dev", env=NO_DB)
    assert bad.returncode == 1
    assert bad.stderr.count("shipway.yaml:") >= 2 and "colour" in bad.stderr
    manifest.write_text(text)
    assert (
        run_cli(
            "models",
            "add",
            "--model",
            "python:tests.pilots.rules:predict",
            "-m",
            str(manifest),
            env=NO_DB,
        ).returncode
        == 0
    )
    assert (
        run_cli(
            "rollout",
            "canary",
            "2",
            "--percent",
            "50",
            "--force",
            "--reason",
            "t",
            "-m",
            str(manifest),
            env=NO_DB,
        ).returncode
        == 0
    )
    server = start_server(manifest, NO_DB)
    for row in pilot.rows[:30]:
        server.client.post("/v1/predict", json={"inputs": row})
    promoted = run_cli(
        "rollout", "promote", "--force", "--reason", "t", "-m", str(manifest), env=NO_DB
    )
    assert promoted.returncode == 0, promoted.stderr
    manifest.write_text(text + "\n# edited\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "changed on disk" not in server.output():
        time.sleep(0.2)
    assert "changed on disk; restart" in server.output()
    again = start_server(manifest, NO_DB)
    assert "the store's champion is v2" in again.output()


def test_every_json_route_reads_json_whatever_its_content_type(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """7: curl -d sends a form Content-Type; a JSON body is read as JSON on every route."""
    manifest = workspace / "shipway.yaml"
    _edit(manifest, review={"policies": [{"name": "all", "sample": 1.0}]})
    server = start_server(manifest, NO_DB)
    form = {"content-type": "application/x-www-form-urlencoded"}
    d = server.client.post(
        "/v1/predict", content=json.dumps({"inputs": pilot.rows[0]}), headers=form
    )
    assert d.status_code == 200
    item = server.client.get("/v1/review/next").json()
    r = server.client.post(
        f"/v1/review/{item['id']}", content=json.dumps({"action": "approve"}), headers=form
    )
    assert r.status_code == 200, r.text
    r = server.client.post("/v1/rollout/shadow", content=json.dumps({"version": 1}), headers=form)
    assert r.status_code in (200, 409), r.text  # read as JSON (the champion cannot shadow)


def test_canary_and_promote_respect_alerts_and_step_checks(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    """8: no canary while a pausing alert fires; no promotion before the step's checks pass
    (an approver may force either, with a reason)."""
    manifest = workspace / "shipway.yaml"
    _edit(
        manifest,
        rollout={"min_requests": 20},
        monitor={
            "schedule": False,
            "min_rows": 1,
            "alerts": [{"name": "guard", "when": "n >= 1 and n < 3", "do": ["pause_canary"]}],
        },
    )
    added = run_cli("models", "add", "--model", str(pilot.model), "-m", str(manifest), env=NO_DB)
    assert added.returncode == 0 and "gate: passed" in added.stdout, added.stdout
    server = start_server(manifest, NO_DB)
    c = server.client
    c.post("/v1/predict", json={"inputs": pilot.rows[0]})
    assert [a["status"] for a in c.post("/v1/monitor/run").json()["alerts"]] == ["firing"]
    blocked = c.post("/v1/rollout/canary", json={"version": 2, "percent": 5})
    assert blocked.status_code == 409 and "guard is firing" in blocked.json()["error"]["message"]
    forced = c.post(
        "/v1/rollout/canary",
        json={"version": 2, "percent": 5, "force": True, "reason": "fix is in v2"},
    )
    assert forced.status_code == 200, forced.text
    held = c.post("/v1/rollout/promote", json={"reason": "looks fine"})
    assert held.status_code == 409 and "guard is firing" in held.json()["error"]["message"]
    for row in pilot.rows[1:6]:
        c.post("/v1/predict", json={"inputs": row})
    second = c.post("/v1/monitor/run").json()
    assert [a["status"] for a in second["alerts"]] == ["resolved"], (
        second["n"],
        second.get("alerts_pending"),
    )
    early = c.post("/v1/rollout/promote", json={"reason": "looks fine"})
    assert early.status_code == 409 and "step checks" in early.json()["error"]["message"]
    done = c.post("/v1/rollout/promote", json={"reason": "hotfix", "force": True})
    assert done.status_code == 200, done.text


def test_the_demo_moves_off_a_busy_port(tmp_path: Path) -> None:
    """12: a taken port is said and another used, not a connection traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        res = run_cli(
            "demo",
            "--duration",
            "8",
            "--port",
            str(taken),
            "--workdir",
            str(tmp_path / "demo"),
            timeout=180,
        )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"port {taken} is taken" in res.stdout and "Traceback" not in res.stderr


def test_cli_output_reads_cleanly(workspace: Path) -> None:
    """13: one UTC, tables at full width when piped, nulls shown as null."""
    manifest = workspace / "shipway.yaml"
    made = run_cli(
        "keys",
        "create",
        "--name",
        "k",
        "--role",
        "viewer",
        "--expires",
        "1d",
        "-m",
        str(manifest),
        env=NO_DB,
    )
    assert made.returncode == 0 and "UTC UTC" not in made.stderr and " UTC" in made.stderr
    listed = run_cli("models", "list", "-m", str(manifest), env={**NO_DB, "COLUMNS": ""})
    widest = max(len(line) for line in listed.stdout.splitlines())
    assert widest > 80 and "…" not in listed.stdout
    _ = free_port


# -- a pilot with an id, a date and missing numerics ------------------------------------------


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The churn pilot, initialised with nothing but its model, data and target."""
    from tests.pilots.churn import write

    folder = tmp_path_factory.mktemp("churn")
    data, model = write(folder)
    res = run_cli(
        "init", "--model", str(model), "--data", str(data), "--target", "churn",
        cwd=folder, env=NO_DB,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return {"dir": folder, "data": data, "model": model, "init": res.stdout}


def _churn_rows(n: int, seed: int) -> list[dict[str, Any]]:
    from tests.pilots.churn import generate

    frame = generate(n, seed).drop(columns=["churn"])
    frame["customer_id"] += 1_000_000  # customers the pilot never saw
    frame["signup_date"] = "2027-03-01"  # and a date far from the pilot's
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def test_ids_and_dates_are_logged_but_not_drift_tested(
    churn: dict[str, Any], start_server: Any, tmp_path: Path
) -> None:
    """1: init says which fields it made ids and metadata; the date is validated as a date;
    the monitor tests the features only, though every id and date is new."""
    assert "id fields" in churn["init"] and "customer_id" in churn["init"]
    assert "metadata fields" in churn["init"] and "signup_date" in churn["init"]
    manifest = churn["dir"] / "shipway.yaml"
    fields = {f.name: f for f in load_manifest(manifest).contract.inputs}
    assert (fields["customer_id"].role, fields["customer_id"].type) == ("id", "int")
    assert (fields["signup_date"].role, fields["signup_date"].type) == ("metadata", "datetime")
    assert fields["monthly_charges"].nullable and fields["tenure_months"].role == "feature"

    copy = tmp_path / "shipway.yaml"
    copy.write_text(manifest.read_text())
    _edit(copy, monitor={"schedule": False, "window": "1h", "min_rows": 50, "alerts": []})
    spec = yaml.safe_load(copy.read_text())
    spec["storage"] = {"path": str(churn["dir"] / ".shipway")}
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(copy, NO_DB)
    rows = _churn_rows(300, seed=31)
    r = server.client.post("/v1/predict", json={"inputs": rows})
    assert r.status_code == 200, r.text
    assert all(d["output"] in ("yes", "no") for d in r.json()["decisions"])

    bad = dict(rows[0], signup_date="2025-02-30")
    r = server.client.post("/v1/predict", json={"inputs": bad})
    assert r.status_code == 422
    assert [(f["field"], f["rule"]) for f in r.json()["error"]["fields"]] == [
        ("signup_date", "type")
    ]

    drift = server.client.post("/v1/monitor/run").json()["drift"]
    assert set(drift["features"]) == {"tenure_months", "contract", "monthly_charges"}
    assert drift["drifted"] == []


def test_roles_can_be_chosen_and_unknown_names_are_refused(
    churn: dict[str, Any], tmp_path: Path
) -> None:
    """1: --feature, --id and --meta override what init decides; a name that is not a column
    is refused with the flag and the file named."""
    res = run_cli(
        "init", "--model", str(churn["model"]), "--data", str(churn["data"]),
        "--target", "churn", "--dir", str(tmp_path), "--meta", "customer_id",
        "--feature", "signup_date", env=NO_DB,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    fields = {f.name: f for f in load_manifest(tmp_path / "shipway.yaml").contract.inputs}
    assert fields["customer_id"].role == "metadata" and fields["signup_date"].role == "feature"

    res = run_cli(
        "init", "--model", str(churn["model"]), "--data", str(churn["data"]),
        "--target", "churn", "--dir", str(tmp_path / "x"), "--id", "account", env=NO_DB,
    )  # fmt: skip
    assert res.returncode == 1
    assert "--id names no input column of churn.csv: ['account']" in res.stderr


def test_unseen_categories_follow_on_unseen(
    churn: dict[str, Any], start_server: Any, tmp_path: Path
) -> None:
    """9: an unseen category is refused by default; with on_unseen: warn it is answered (the
    pipeline ignores unknown levels) and counted in /metrics."""
    manifest = churn["dir"] / "shipway.yaml"
    row = dict(_churn_rows(1, seed=32)[0], contract="weekly")
    server = start_server(manifest, NO_DB)
    r = server.client.post("/v1/predict", json={"inputs": row})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "contract"
    server.stop()

    spec = yaml.safe_load(manifest.read_text())
    for f in spec["contract"]["inputs"]:
        if f["name"] == "contract":
            f["on_unseen"] = "warn"
    copy = tmp_path / "shipway.yaml"
    spec["storage"] = {"path": str(churn["dir"] / ".shipway")}
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(copy, NO_DB)
    r = server.client.post("/v1/predict", json={"inputs": [row, row]})
    assert r.status_code == 200 and r.json()["decisions"][0]["output"] in ("yes", "no")
    metrics = server.client.get("/metrics").text
    assert 'shipway_unseen_values_total{field="contract"} 2.0' in metrics


def test_a_model_fitted_on_arrays_gets_only_its_features(
    churn: dict[str, Any], start_server: Any, tmp_path: Path
) -> None:
    """1: a model without column names is given the feature fields alone, in contract order;
    ids and metadata stay in the log."""
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame = pd.read_csv(churn["data"])
    x = frame[["tenure_months", "monthly_charges"]].to_numpy()
    model = HistGradientBoostingClassifier(max_iter=30).fit(x, frame["churn"])
    joblib.dump(model, tmp_path / "arrays.joblib")
    res = run_cli(
        "init", "--model", str(tmp_path / "arrays.joblib"), "--data", str(churn["data"]),
        "--target", "churn", "--dir", str(tmp_path), "--meta", "contract", env=NO_DB,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    server = start_server(tmp_path / "shipway.yaml", NO_DB)
    rows = _churn_rows(20, seed=33)
    got = [
        d["output"]
        for d in server.client.post("/v1/predict", json={"inputs": rows}).json()["decisions"]
    ]
    want = model.predict(
        np.array([[r["tenure_months"], r.get("monthly_charges", np.nan)] for r in rows])
    ).tolist()
    assert got == want


def _init_churn(churn: dict[str, Any], folder: Path, env: dict[str, str]) -> Path:
    res = run_cli(
        "init", "--model", str(churn["model"]), "--data", str(churn["data"]),
        "--target", "churn", "--dir", str(folder), env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    manifest = folder / "shipway.yaml"
    _edit(manifest, monitor={"schedule": False, "window": "1h", "min_rows": 1000, "alerts": []})
    return manifest


def test_labels_keyed_by_a_business_id_join_the_newest_decision(
    churn: dict[str, Any], start_server: Any, tmp_path: Path, database_url: str
) -> None:
    """6: feedback import --key customer_id (and {"key": ...} over HTTP) labels the newest
    decision that carried the key; an unknown key refuses the file, naming it, unless
    --skip-unmatched; a --key that is not the id field is refused."""
    env = {"SHIPWAY_DATABASE_URL": database_url}
    manifest = _init_churn(churn, tmp_path, env)
    server = start_server(manifest, env)
    rows = _churn_rows(3, seed=34)
    first = server.client.post("/v1/predict", json={"inputs": rows}).json()["decisions"]
    # the same customer again, its id sent as 1000042.0: the file's 1000042 still finds it
    again_row = dict(rows[0], customer_id=float(rows[0]["customer_id"]))
    again = server.client.post("/v1/predict", json={"inputs": again_row}).json()
    a, b, c = (r["customer_id"] for r in rows)

    truth = tmp_path / "truth.csv"
    truth.write_text(f"customer_id,label\n{a},yes\n{b},no\n999,yes\n")
    refused = run_cli("feedback", "import", str(truth), "--key", "customer_id",
                      "-m", str(manifest), env=env)  # fmt: skip
    assert refused.returncode == 1
    assert "key breaks 'unknown_key'" in refused.stderr and "nothing was stored" in refused.stderr
    done = run_cli("feedback", "import", str(truth), "--key", "customer_id",
                   "--skip-unmatched", "-m", str(manifest), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stored 2 labels" in done.stdout and "1 keys named no decision" in done.stdout
    wrong = run_cli("feedback", "import", str(truth), "--key", "tenure_months",
                    "-m", str(manifest), env=env)  # fmt: skip
    assert wrong.returncode == 1 and "which is customer_id" in wrong.stderr

    r = server.client.post(
        "/v1/feedback", json={"feedback": [{"key": a, "label": "no"}, {"key": c, "label": "no"}]}
    )
    assert r.status_code == 201, r.text
    stored = r.json()["stored"]
    # a's newest decision is the second request's, and the file labelled it first
    assert (stored[0]["id"], stored[0]["revision"]) == (again["id"], 2)
    assert (stored[1]["id"], stored[1]["revision"]) == (first[2]["id"], 1)
    time.sleep(1.1)  # the newest decision for a is now older than the window asked for
    r = server.client.post(
        "/v1/feedback", json={"feedback": [{"key": a, "label": "no"}], "within": "1s"}
    )
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["rule"] == "unknown_key"


def test_refused_requests_are_kept_and_counted_after_a_restart(
    churn: dict[str, Any], start_server: Any, tmp_path: Path, database_url: str
) -> None:
    """10: each refused row is stored with its field and rule; the monitor's figures come from
    the store, so a new process reports them; a value sent under an unknown name is not kept."""
    env = {"SHIPWAY_DATABASE_URL": database_url}
    manifest = _init_churn(churn, tmp_path, env)
    server = start_server(manifest, env)
    row = _churn_rows(1, seed=35)[0]
    assert server.client.post("/v1/predict", json={"inputs": row}).status_code == 200
    bad_date = dict(row, signup_date="someday")
    assert server.client.post("/v1/predict", json={"inputs": bad_date}).status_code == 422
    extra = dict(row, email="someone@example.com")
    assert server.client.post("/v1/predict", json={"inputs": [row, extra]}).status_code == 422
    nul = dict(row, contract="two\x00year")  # PostgreSQL text cannot hold NUL
    assert server.client.post("/v1/predict", json={"inputs": nul}).status_code == 422
    server.stop()

    server = start_server(manifest, env)
    ops = server.client.post("/v1/monitor/run").json()["operations"]
    assert ops["rejected"] == 3 and ops["rejected_requests"] == 3
    assert ops["contract_violations"] == {
        "signup_date:type": 1,
        "(unknown):unknown_field": 1,
        "contract:category": 1,
    }
    assert ops["n"] == 1 and ops["rejected_share"] == 3 / 4
    server.stop()
    report = run_cli("monitor", "report", "-m", str(manifest), env=env)
    assert "refused: 3 rows in 3 requests (share 0.7500)" in report.stdout, report.stderr

    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        kept = {f: v for f, v in conn.execute(text("SELECT field, value FROM rejections"))}
    engine.dispose()
    assert kept == {"signup_date": '"someday"', "email": None, "contract": '"two\\u0000year"'}


def test_probabilities_on_request(churn: dict[str, Any], start_server: Any) -> None:
    """11: "return": ["probabilities"] adds {label: p} per row, summing to 1 and agreeing with
    the answer's confidence; an unknown ask is a 400 naming it."""
    manifest = churn["dir"] / "shipway.yaml"
    server = start_server(manifest, NO_DB)
    rows = _churn_rows(5, seed=36)
    plain = server.client.post("/v1/predict", json={"inputs": rows}).json()["decisions"]
    assert all("probabilities" not in d for d in plain)
    r = server.client.post("/v1/predict", json={"inputs": rows, "return": ["probabilities"]})
    assert r.status_code == 200, r.text
    for d in r.json()["decisions"]:
        p = d["probabilities"]
        assert set(p) == {"no", "yes"} and abs(sum(p.values()) - 1) < 1e-9
        assert p[d["output"]] == d["confidence"] == max(p.values())
    for wrong in (["shap"], [{}], "probabilities"):
        r = server.client.post("/v1/predict", json={"inputs": rows[0], "return": wrong})
        message = r.json()["error"]["message"]
        assert r.status_code == 400 and '"return" must be a list of' in message, wrong


def test_a_real_pilot_is_onboarded_with_the_commands_init_prints(tmp_path: Path) -> None:
    """Acceptance: the churn pilot (an id, a date, missing charges, a pipeline fitted on all of
    them) goes from its files to an authenticated, monitored service with init and the six
    commands it prints, nothing else; the first request carries the id and the date."""
    import re

    from tests.conftest import run_pasted
    from tests.pilots.churn import write

    data, model = write(tmp_path)
    res = run_cli(
        "init", "--model", str(model), "--data", str(data), "--target", "churn",
        cwd=tmp_path, env=NO_DB,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    start = lines.index("Next, to serve it with authentication on (copy and paste):")
    commands = [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]
    assert len(commands) == 6  # secret, admin key, predictor key, serve, wait, first request
    assert "customer_id" in commands[-1] and "signup_date" in commands[-1]
    # A probe after the pasted commands (not part of the onboarding): a request with no key.
    probe = (
        'echo "anonymous=$(curl -s -o /dev/null -w "%{http_code}" localhost:8000/v1/predict'
        ' -d \'{"inputs": {}}\')"'
    )
    out = run_pasted([*commands, probe], tmp_path)
    log = out.stdout + out.stderr
    decision = re.search(r'\{"id":"[^"]+","output":"(yes|no)"[^\n]*\}', out.stdout)
    assert decision is not None, log
    assert '"route":"champion"' in decision.group(0)
    assert "anonymous=401" in out.stdout, log
    assert "authentication on" in out.stderr and "3 alert rules" in out.stderr, log
    export = run_cli("decisions", "export", "--format", "jsonl", cwd=tmp_path, env=NO_DB)
    logged = [json.loads(line) for line in export.stdout.splitlines()]
    assert len(logged) == 1, export.stderr
    assert {"customer_id", "signup_date"} <= set(logged[0]["inputs"])

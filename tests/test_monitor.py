"""Monitoring: statistics against SciPy, false-alarm rates, drift alerts over a real server,
performance from feedback, webhooks delivered exactly once, the expression language."""

from __future__ import annotations

import csv
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats
from scipy.spatial.distance import jensenshannon

from shipway.errors import ShipwayError
from shipway.expr import Expression
from shipway.monitor.drift import (
    Reference,
    benjamini_hochberg,
    category_drift,
    drift_report,
    numeric_drift,
    prepare_category,
    prepare_numeric,
)
from tests.conftest import run_cli
from tests.pilots.loans import generate

NO_DB = {"SHIPWAY_DATABASE_URL": ""}


# -- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "m", "ties"),
    [(1000, 1000, False), (1200, 700, False), (900, 900, True), (5000, 333, True)],
)
def test_numeric_statistics_equal_scipy(n: int, m: int, ties: bool) -> None:
    rng = np.random.default_rng(n + m)
    a, b = rng.normal(0, 1, n), rng.normal(0.2, 1.3, m)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    got = numeric_drift(prepare_numeric(a), b)
    ks = stats.ks_2samp(a, b, method="asymp")
    assert got["ks"] == pytest.approx(ks.statistic, abs=1e-12)
    assert got["p_value"] == pytest.approx(ks.pvalue, abs=1e-12)
    assert got["wasserstein"] == pytest.approx(stats.wasserstein_distance(a, b), abs=1e-12)
    assert got["wasserstein_norm"] == pytest.approx(
        stats.wasserstein_distance(a, b) / np.std(a), abs=1e-12
    )


def test_category_statistics_equal_scipy() -> None:
    rng = np.random.default_rng(3)
    a = rng.choice(["a", "b", "c", "d"], 1500, p=[0.4, 0.3, 0.2, 0.1])
    b = rng.choice(["a", "b", "c", "e"], 800, p=[0.3, 0.3, 0.3, 0.1])
    got = category_drift(prepare_category(a.tolist()), b.tolist())
    levels = sorted(set(a) | set(b))
    table = np.array([[np.sum(a == v) for v in levels], [np.sum(b == v) for v in levels]])
    ref = stats.chi2_contingency(table, correction=False)
    assert got["chi2"] == pytest.approx(ref.statistic, abs=1e-9)
    assert got["p_value"] == pytest.approx(ref.pvalue, abs=1e-12)
    js = jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum(), base=2)
    assert got["jensen_shannon"] == pytest.approx(js, abs=1e-12)
    assert got["unseen_levels"] == ["e"]


def test_benjamini_hochberg_equals_scipy() -> None:
    ps = np.random.default_rng(5).uniform(0, 0.2, 40)
    assert benjamini_hochberg(list(ps)) == pytest.approx(
        list(stats.false_discovery_control(ps, method="bh")), abs=1e-12
    )


def test_false_alarm_rates_stay_at_the_nominal_level() -> None:
    """1,000 seeded no-drift trials at 1,000 vs 1,000 rows: each test fires about 5% of the
    time. A goodness-of-fit chi-square that trusts the reference counts as exact fires far
    more often; that is the mistake the two-sample test avoids."""
    rng = np.random.default_rng(2026)
    trials, alpha = 1000, 0.05
    ks_fired = chi_fired = gof_fired = 0
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    levels = list("abcde")
    for _ in range(trials):
        a, b = rng.normal(0, 1, 1000), rng.normal(0, 1, 1000)
        ks_fired += numeric_drift(prepare_numeric(a), b)["p_value"] < alpha
        ca = rng.choice(levels, 1000, p=probs).tolist()
        cb = rng.choice(levels, 1000, p=probs).tolist()
        chi_fired += category_drift(prepare_category(ca), cb)["p_value"] < alpha
        ref_counts = np.array([ca.count(v) for v in levels], dtype=float)
        cur_counts = np.array([cb.count(v) for v in levels], dtype=float)
        gof = stats.chisquare(cur_counts, ref_counts / ref_counts.sum() * cur_counts.sum())
        gof_fired += gof.pvalue < alpha
    assert abs(ks_fired / trials - alpha) <= 0.02, ks_fired
    assert abs(chi_fired / trials - alpha) <= 0.02, chi_fired
    assert gof_fired / trials > 2 * alpha  # the naive test, for contrast


def test_significant_but_small_changes_do_not_count_as_drift() -> None:
    rng = np.random.default_rng(9)
    ref_cols = {"x": rng.normal(0, 1, 200_000), "y": rng.normal(0, 1, 200_000)}
    ref = Reference.build(ref_cols, {"x": "float", "y": "float"})
    cur = {"x": rng.normal(0.03, 1, 200_000), "y": rng.normal(0.5, 1, 200_000)}
    rep = drift_report(ref, cur)
    x, y = rep["features"]["x"], rep["features"]["y"]
    assert x["significant"] and not x["large"] and not x["drifted"]  # tiny, yet "significant"
    assert y["drifted"] and rep["drifted"] == ["y"] and rep["drift_share"] == 0.5


# -- the expression language -----------------------------------------------------------------


def test_expressions_evaluate_safely() -> None:
    ctx = {
        "drift_share": 0.4,
        "n": 600,
        "inputs": {"amount": 60000},
        "output": "deny",
        "accuracy": None,
    }
    assert Expression("drift_share > 0.3 and n >= 500").test(ctx)
    assert Expression("inputs.amount > 50000 and output == 'deny'").test(ctx)
    assert Expression("output in ['deny', 'refer']").test(ctx)
    assert not Expression("accuracy < 0.8").test(ctx)  # a missing figure never fires
    assert not Expression("missing.thing > 1").test(ctx)
    assert Expression("not (n < 100) and -n < 0").test(ctx)
    for bad in (
        "__import__('os')",
        "open('x')",
        "n.__class__",
        "[x for x in n]",
        "n[0]",
        "lambda: 1",
        "n is None",
        "n > ",
    ):
        with pytest.raises(ShipwayError):
            Expression(bad)


# -- over a real server ----------------------------------------------------------------------


class Receiver:
    """A webhook receiver started by the test (a real HTTP server on 127.0.0.1)."""

    def __init__(self, port: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self) -> list[tuple[str, str]]:
        return [(e["rule"], e["status"]) for e in self.events]

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The first ``n`` events, once the outbox has delivered them (or what came in time)."""
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events[:n]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loans(tmp_path: Path) -> Path:
    data = tmp_path / "loans.csv"
    rows = generate(3000, seed=1)
    from tests.pilots.loans import predict

    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "decision"])
        w.writeheader()
        for r, p in zip(rows, predict(rows), strict=True):
            w.writerow({**r, "decision": p["output"]})
    res = run_cli(
        "init",
        "--model",
        "python:tests.pilots.loans:predict",
        "--data",
        str(data),
        "--target",
        "decision",
        "--name",
        "loans",
        "--dir",
        str(tmp_path / "svc"),
        env=NO_DB,
    )
    assert res.returncode == 0, res.stderr
    return tmp_path / "svc" / "shipway.yaml"


def _configure(manifest: Path, receiver: Receiver, alerts: list[dict[str, Any]]) -> None:
    spec = yaml.safe_load(manifest.read_text())
    spec["monitor"] = {
        "window_rows": 400,
        "min_rows": 200,
        "schedule": False,
        "alerts": alerts,
        "webhooks": [{"url": receiver.url}],
    }
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))


def _send(server: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for k in range(0, len(rows), 50):
        r = server.client.post("/v1/predict", json={"inputs": rows[k : k + 50]})
        assert r.status_code == 200, r.text
        out.extend(r.json()["decisions"])
    return out


def test_drift_alert_fires_within_its_windows_names_features_and_resolves_once(
    loans: Path, start_server: Any
) -> None:
    receiver = Receiver()
    try:
        _configure(
            loans,
            receiver,
            [
                {
                    "name": "input-drift",
                    "when": "drift_share >= 0.25",
                    "for": 2,
                    "do": ["notify", "retrain"],
                }
            ],
        )
        server = start_server(loans, NO_DB)
        run = lambda: server.client.post("/v1/monitor/run").json()  # noqa: E731

        for seed in (11, 12):  # held-back data from the pilot's distribution: quiet
            _send(server, generate(400, seed=seed))
            res = run()
            assert res["drift"]["drifted"] == [] and res["alerts"] == []
        _send(server, generate(400, seed=21, shifted=True))
        first = run()
        assert sorted(first["drift"]["drifted"]) == ["amount", "region"]
        assert first["alerts"] == []  # 'for: 2': one window is not enough
        _send(server, generate(400, seed=22, shifted=True))
        fired = run()
        assert [a["status"] for a in fired["alerts"]] == ["firing"]
        acts = {a["action"]: a for a in fired["alerts"][0]["actions"]}
        assert len(acts["notify"]["queued"]) == 1  # queued with the firing, sent by the outbox
        assert acts["retrain"]["result"] == "not run: the manifest has no training: section"
        receiver.wait_for(1)
        assert receiver.statuses() == [("input-drift", "firing")]
        listed = server.client.get("/v1/alerts").json()["events"][0]["detail"]["actions"]
        assert listed[0]["deliveries"][0]["status"] == "delivered"
        assert sorted(receiver.events[0]["figures"]["drifted_features"]) == ["amount", "region"]
        _send(server, generate(400, seed=23, shifted=True))
        assert run()["alerts"] == []  # still firing: no second notification
        _send(server, generate(400, seed=31))
        assert [a["status"] for a in run()["alerts"]] == ["resolved"]
        _send(server, generate(400, seed=32))
        assert run()["alerts"] == []
        receiver.wait_for(2)
        assert receiver.statuses() == [("input-drift", "firing"), ("input-drift", "resolved")]

        listed = run_cli("alerts", "list", "--json", "-m", str(loans), env=NO_DB)
        statuses = [json.loads(line)["status"] for line in listed.stdout.splitlines()]
        assert statuses == ["firing", "resolved"]
        report = run_cli("monitor", "report", "-m", str(loans), env=NO_DB)
        assert report.returncode == 0 and "input drift" in report.stdout
        metrics = server.client.get("/metrics").text
        assert 'shipway_monitor{figure="drift_share"}' in metrics
        assert 'shipway_feature_drifted{feature="amount"}' in metrics
    finally:
        receiver.close()


def test_feedback_is_validated_revised_and_drives_the_performance_rule(
    loans: Path, start_server: Any, tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        _configure(
            loans,
            receiver,
            [
                {
                    "name": "accuracy",
                    "for": 1,
                    "do": ["notify"],
                    "when": "labeled >= 50 and accuracy < 0.8",
                }
            ],
        )
        server = start_server(loans, NO_DB)
        c = server.client
        decisions = _send(server, generate(300, seed=41))
        # bad feedback is refused whole, naming each problem
        bad = c.post(
            "/v1/feedback",
            json={
                "feedback": [
                    {"id": decisions[0]["id"], "label": "maybe"},
                    {"id": "no-such-id", "label": "deny"},
                ]
            },
        )
        assert bad.status_code == 422
        err = bad.json()["error"]
        assert err["code"] == "feedback_invalid"
        assert [(f["row"], f["field"], f["rule"]) for f in err["fields"]] == [
            (0, "label", "output_spec"),
            (1, "id", "unknown_decision"),
        ]
        # correct labels: accuracy 1.0, no alert
        good = [{"id": d["id"], "label": d["output"]} for d in decisions[:100]]
        assert c.post("/v1/feedback", json={"feedback": good}).status_code == 201
        res = c.post("/v1/monitor/run").json()
        assert res["performance"]["labeled"] == 100 and res["performance"]["accuracy"] == 1.0
        assert res["alerts"] == []
        # delayed ground truth from a file says 60 of them were wrong: revisions, not overwrites
        flip = {"approve": "deny", "deny": "approve"}
        path = tmp_path / "truth.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label"])
            for d in decisions[:60]:
                w.writerow([d["id"], flip[d["output"]]])
        imported = run_cli("feedback", "import", str(path), "-m", str(loans), env=NO_DB)
        assert imported.returncode == 0, imported.stderr
        assert "60 revisions" in imported.stdout
        res = c.post("/v1/monitor/run").json()
        assert res["performance"]["accuracy"] == pytest.approx(0.4)
        per_label = res["performance"]["per_label"]
        assert sum(v["support"] for v in per_label.values()) == 100  # every labeled decision
        assert [a["status"] for a in res["alerts"]] == ["firing"]
        receiver.wait_for(1)
        assert receiver.statuses() == [("accuracy", "firing")]
        assert receiver.events[0]["figures"]["accuracy"] == pytest.approx(0.4)
        one = c.post("/v1/feedback", json={"id": decisions[0]["id"], "label": "deny"}).json()
        assert one["stored"][0]["revision"] == 3
    finally:
        receiver.close()


def test_alert_actions_pause_a_canary_through_the_rollout(
    workspace: Path, pilot: Any, start_server: Any
) -> None:
    manifest = workspace / "shipway.yaml"
    env = {"SHIPWAY_DATABASE_URL": ""}
    added = run_cli(
        "models",
        "add",
        "--model",
        "python:tests.pilots.rules:predict",
        "-m",
        str(manifest),
        env=env,
    )
    assert added.returncode == 0, added.stderr
    canary = run_cli(
        "rollout",
        "canary",
        "2",
        "--percent",
        "50",
        "--force",
        "--reason",
        "trial",
        "-m",
        str(manifest),
        env=env,
    )
    assert canary.returncode == 0, canary.stderr
    spec = yaml.safe_load(manifest.read_text())
    spec["monitor"] = {
        "window_rows": 50,
        "min_rows": 10_000,
        "schedule": False,
        "alerts": [{"name": "canary-guard", "when": "n >= 20", "do": ["pause_canary", "review"]}],
    }
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(manifest, env)
    for row in pilot.rows[:30]:
        assert server.client.post("/v1/predict", json={"inputs": row}).status_code == 200
    res = server.client.post("/v1/monitor/run").json()
    assert set(res["by_version"]) == {"1", "2"}  # figures per version that answered
    acts = {a["action"]: a["result"] for a in res["alerts"][0]["actions"]}
    assert acts["pause_canary"].startswith("rolled back") and "canary None" in acts["pause_canary"]
    assert acts["review"] == "opened a review batch of 20 recent decisions (queue 'alerts')"
    assert server.client.get("/v1/review/stats").json()["queues"]["alerts"]["depth"] == 20
    assert server.client.get("/v1/rollout").json()["state"]["canary"] is None
    history = server.client.get("/v1/rollout/history").json()["events"]
    assert history[-1]["actor"] == "system:monitor" and history[-1]["action"] == "rollback-canary"

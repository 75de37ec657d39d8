"""Human review over a real server: policies, hold mode, the queue, SLAs, outcomes as labels."""

from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from shipway.expr import Expression
from shipway.manifest import ReviewSpec
from shipway.review.queue import Policies
from tests.pilots.loans import generate, predict
from tests.test_monitor import NO_DB, Receiver, loans  # noqa: F401 - the loans fixture

POLICIES = [
    {
        "name": "unsure",
        "when": "confidence < 0.6",
        "mode": "respond_then_review",
        "priority": 1,
        "queue": "default",
    },
    {
        "name": "large",
        "when": "inputs.amount > 3500 and output == 'deny'",
        "mode": "hold",
        "priority": 5,
        "queue": "senior",
    },
]


def _configure(manifest: Path, **review: Any) -> None:
    spec = yaml.safe_load(manifest.read_text())
    spec["review"] = {"policies": POLICIES, **review}
    spec["monitor"] = {"window_rows": 1000, "min_rows": 10_000, "schedule": False}
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))


def _expected(row: dict[str, Any]) -> str | None:
    p = predict([row])[0]
    if row["amount"] > 3500 and p["output"] == "deny":
        return "large"
    if p["confidence"] < 0.6:
        return "unsure"
    return None


def test_policies_route_exactly_the_decisions_they_should(
    loans: Path,  # noqa: F811 - the fixture imported above
    start_server: Any,
) -> None:
    _configure(loans)
    server = start_server(loans, NO_DB)
    rows = generate(200, seed=51)
    got = {}
    for row in rows:
        r = server.client.post("/v1/predict", json={"inputs": row})
        body = r.json()
        if r.status_code == 202:
            assert body["status"] == "pending_review" and "output" not in body
            got[body["id"]] = "large"
        else:
            assert r.status_code == 200
            got[body["id"]] = body.get("review", {}).get("policy")
    expected = [_expected(r) for r in rows]
    assert sorted(map(str, got.values())) == sorted(map(str, expected))
    assert {"large", "unsure", None} <= set(expected)  # the data exercises every path
    stats = server.client.get("/v1/review/stats").json()
    assert stats["queues"]["senior"]["depth"] == expected.count("large")
    assert stats["queues"]["default"]["depth"] == expected.count("unsure")


def test_sampling_takes_about_its_share() -> None:
    spec = ReviewSpec.model_validate({"policies": [{"name": "qa", "sample": 0.1}]})
    pol = Policies(spec, seed=7)
    hits = sum(pol.match({"confidence": 0.9}) is not None for _ in range(5000))
    assert 400 < hits < 600
    assert Expression("inputs.amount > 5").names == {"inputs.amount"}


def test_hold_mode_answers_with_the_reviewer_and_concurrent_reviewers_never_share(
    loans: Path,  # noqa: F811 - the fixture imported above
    start_server: Any,
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    try:
        _configure(loans, webhook=receiver.url)
        server = start_server(loans, NO_DB)
        c = server.client
        rows = [r for r in generate(400, seed=61) if _expected(r) == "large"][:12]
        held = []
        for row in rows:
            r = c.post("/v1/predict", json={"inputs": row})
            assert r.status_code == 202
            held.append(r.json())
        status = c.get(held[0]["status_url"]).json()
        assert status["status"] == "pending_review" and status["output"] is None

        def reviewer(name: str) -> list[str]:
            mine = []
            with httpx.Client(
                base_url=server.base, timeout=30, headers={"x-shipway-actor": name}
            ) as rc:
                while True:
                    r = rc.get("/v1/review/next", params={"queue": "senior"})
                    if r.status_code == 204:
                        return mine
                    item = r.json()
                    mine.append(item["id"])
                    assert item["inputs"]["amount"] > 3500 and item["output"] == "deny"
                    action = {"action": "override", "output": "approve", "reason": "good payer"}
                    if item["decision_id"] != held[0]["id"]:
                        action = {"action": "approve", "reason": "fine"}
                    assert rc.post(f"/v1/review/{item['id']}", json=action).status_code == 200

        with cf.ThreadPoolExecutor(4) as pool:
            claimed = list(pool.map(reviewer, ["ana", "bo", "cy", "di"]))
        flat = [i for part in claimed for i in part]
        assert len(flat) == len(set(flat)) == len(held)  # nobody got an item twice
        final = c.get(held[0]["status_url"]).json()
        assert final["status"] == "reviewed" and final["output"] == "approve"
        assert final["model_output"] == "deny"
        other = c.get(held[1]["status_url"]).json()
        assert other["output"] == "deny" and other["status"] == "reviewed"
        receiver.wait_for(len(held))
        hooks = [e for e in receiver.events if e.get("status") == "reviewed"]
        assert len(hooks) == len(held)
        assert any(e["decision_id"] == held[0]["id"] and e["output"] == "approve" for e in hooks)
        # outcomes are labels: the monitor's performance sees the override
        res = c.post("/v1/monitor/run").json()
        assert res["performance"]["labeled"] == len(held)
        assert res["performance"]["accuracy"] == (len(held) - 1) / len(held)
        assert res["review"]["override_rate"] == 1 / len(held)
        audit = c.get("/v1/audit", params={"limit": 50}).json()["events"]
        assert sum(e["action"] == "review.override" for e in audit) == 1
        stats = c.get("/v1/review/stats").json()
        assert sum(stats["reviewed_by"].values()) == len(held)
    finally:
        receiver.close()


def test_expired_claims_return_and_sla_breaches_escalate_once(
    loans: Path,  # noqa: F811 - the fixture imported above
    start_server: Any,
) -> None:
    receiver = Receiver()
    try:
        _configure(loans, claim_ttl="1s", queues={"senior": {"sla": "2s"}})
        spec = yaml.safe_load(loans.read_text())
        spec["monitor"]["webhooks"] = [{"url": receiver.url}]
        loans.write_text(yaml.safe_dump(spec, sort_keys=False))
        server = start_server(loans, NO_DB)
        c = server.client
        row = next(r for r in generate(400, seed=71) if _expected(r) == "large")
        assert c.post("/v1/predict", json={"inputs": row}).status_code == 202
        first = c.get("/v1/review/next", headers={"x-shipway-actor": "ana"}).json()
        assert c.get("/v1/review/next", headers={"x-shipway-actor": "bo"}).status_code == 204
        time.sleep(1.3)  # ana's claim expires
        second = c.get("/v1/review/next", headers={"x-shipway-actor": "bo"}).json()
        assert second["id"] == first["id"]
        late = c.post(
            f"/v1/review/{first['id']}",
            json={"action": "approve"},
            headers={"x-shipway-actor": "ana"},
        )
        assert late.status_code == 409
        bad = c.post(
            f"/v1/review/{first['id']}",
            json={"action": "override", "output": "maybe"},
            headers={"x-shipway-actor": "bo"},
        )
        assert bad.status_code == 400 and "output spec" in bad.json()["error"]["message"]
        deadline = time.monotonic() + 15
        events: list[dict[str, Any]] = []
        while not events and time.monotonic() < deadline:
            time.sleep(0.5)
            events = [
                e for e in c.get("/v1/alerts").json()["events"] if e["rule"] == "review-sla-senior"
            ]
        assert len(events) == 1
        time.sleep(4.5)  # two more sweeps: still one escalation
        events = [
            e for e in c.get("/v1/alerts").json()["events"] if e["rule"] == "review-sla-senior"
        ]
        assert len(events) == 1
        assert [e["rule"] for e in receiver.events] == ["review-sla-senior"]
        item = c.get(f"/v1/review/{first['id']}").json()
        assert item["sla_breached"] is True and item["priority"] >= 105
        explained = c.get(f"/v1/review/{first['id']}/explain").json()
        top = explained["features"][0]
        assert top["feature"] == "amount" and top["effect"] > 0  # a large amount made it 'deny'
        assert len(explained["features"]) == 4
    finally:
        receiver.close()


def test_review_from_the_terminal(loans: Path, start_server: Any) -> None:  # noqa: F811
    _configure(loans)
    server = start_server(loans, NO_DB)
    rows = [r for r in generate(300, seed=81) if _expected(r) == "unsure"][:2]
    for row in rows:
        assert server.client.post("/v1/predict", json={"inputs": row}).status_code == 200
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "shipway", "review", "-m", str(loans), "--queue", "default"],
        input='a\nlooks right\no\n"approve"\nknown customer\n',
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **NO_DB},
    )
    assert res.returncode == 0, res.stderr
    assert "2 reviewed" in res.stdout and "recorded: override" in res.stdout
    stats = server.client.get("/v1/review/stats").json()
    assert stats["queues"].get("default", {"depth": 0})["depth"] == 0


def test_stop_switch_can_hold_every_request_for_a_person(
    loans: Path,  # noqa: F811 - the fixture imported above
    start_server: Any,
) -> None:
    spec = yaml.safe_load(loans.read_text())
    spec["stop"] = {"behavior": "review"}
    loans.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(loans, NO_DB)
    c = server.client
    assert c.post("/v1/stop", json={"reason": "model under investigation"}).status_code == 200
    r = c.post("/v1/predict", json={"inputs": generate(1, seed=91)[0]})
    assert r.status_code == 202
    did = r.json()["id"]
    item = c.get("/v1/review/next", params={"queue": "stopped"}).json()
    assert item["decision_id"] == did and item["output"] is None
    assert c.post(f"/v1/review/{item['id']}", json={"action": "approve"}).status_code == 400
    done = c.post(f"/v1/review/{item['id']}", json={"action": "override", "output": "deny"})
    assert done.status_code == 200
    final = c.get(f"/v1/decisions/{did}").json()
    assert final["status"] == "reviewed" and final["output"] == "deny"
    assert final["route"] == "stopped"

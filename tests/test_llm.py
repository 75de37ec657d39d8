"""LLM pilots against a real OpenAI-compatible server process (``tests/upstream_server.py``,
whose answers a real text classifier computes): plain-text answers read as labels, prompts with
literal braces, per-row fallbacks, a breaker that counts outages only, and every billed call
costed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from shipway.errors import ModelError, OutputInvalid
from shipway.manifest import EndpointSpec
from tests.conftest import run_cli
from tests.test_guards import NO_DB, Upstream, edit_manifest
from tests.test_v2_llm import _texts

PROMPT = 'Reply with one word, as in {"label": "positive"}. Text: {text}'
PRICES = {"prompt_price_per_1k": 0.5, "completion_price_per_1k": 1.5}


def _init(tmp_path: Path, upstream: Upstream, *args: str, rows: int = 40, **endpoint: Any) -> Path:
    data = tmp_path / "reviews.csv"
    _texts(data, rows)
    frame = pd.read_csv(data)
    frame.insert(0, "ticket_id", range(5000, 5000 + len(frame)))  # init makes it an id
    frame.to_csv(data, index=False)
    spec = tmp_path / "endpoint.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"kind": "chat", "model": "triage", "prompt": PROMPT, "answer": "label", **PRICES,
             **endpoint}
        )
    )  # fmt: skip
    res = run_cli(
        "init", "--model", f"{upstream.base}/v1/chat/completions", "--endpoint", str(spec),
        "--data", str(data), "--target", "label", "--name", "reviews",
        "--dir", str(tmp_path / "svc"), *args, env=NO_DB,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (tmp_path / "init.out").write_text(res.stdout)
    return tmp_path / "svc" / "shipway.yaml"


def _guards(manifest: Path, **breaker: Any) -> None:
    edit_manifest(
        manifest,
        guards={
            "timeout_ms": 3000,
            "breaker": {"failures": 3, "window_s": 60, "cooldown_s": 60, **breaker},
            "fallback": [{"default": {"output": "negative", "confidence": None}}],
        },
    )


def _billed(upstream: Upstream) -> float:
    got = httpx.get(f"{upstream.base}/admin/count", timeout=5).json()
    return (got["prompt_tokens"] * 0.5 + got["completion_tokens"] * 1.5) / 1000


def test_answer_text_is_matched_to_the_labels() -> None:
    """label: exact, then ignoring case and punctuation, then the first label word; regex:
    the named group; anything else is an invalid answer, not a guess."""
    from shipway.models.endpoints import ChatPredictor

    spec = EndpointSpec(kind="chat", prompt="{text}", answer="label")
    p = ChatPredictor(
        "http://127.0.0.1:9/v1", spec, ["text"], 1.0, ["billing", "hardware", "other"]
    )
    read = p.reader.read
    assert read("billing") == ("billing", None)
    assert read("  Hardware.\n") == ("hardware", None)
    assert read("The ticket is about billing, not hardware.") == ("billing", None)
    for unreadable in ("I cannot tell.", "", "billings"):
        with pytest.raises(OutputInvalid, match="names none of the labels"):
            read(unreadable)
    rx = EndpointSpec(
        kind="chat",
        prompt="{text}",
        answer="regex",
        answer_pattern=r"LABEL=(?P<output>[\w.]+) P=(?P<confidence>[0-9.]+)",
    )
    q = ChatPredictor("http://127.0.0.1:9/v1", rx, ["text"], 1.0, None)
    assert q.reader.read("ok LABEL=other P=0.75") == ("other", 0.75)
    assert q.reader.read("LABEL=12.5 P=1") == (12.5, 1.0)  # a number for a regression
    numbered = ChatPredictor("http://127.0.0.1:9/v1", spec, ["text"], 1.0, [0, 1])
    assert numbered.reader.read("1") == (1, None)  # the label as declared, not its text
    with pytest.raises(OutputInvalid, match="answer_pattern"):
        q.reader.read("nothing here")
    with pytest.raises(ValueError, match="named group"):
        EndpointSpec(kind="chat", prompt="{text}", answer="regex", answer_pattern="(x)")


def test_prompt_braces_are_text_unless_they_name_a_field() -> None:
    from shipway.models.endpoints import Template

    t = Template('Example: {"label": "x"}; literal {{text}}; value {text}', ["text"])
    assert t.render({"text": "hi"}) == 'Example: {"label": "x"}; literal {text}; value hi'
    with pytest.raises(ModelError, match=r"\{\{cutsomer\}\}"):
        Template("Hello {cutsomer}", ["customer"])


def test_a_plain_text_pilot_from_init_to_serve(tmp_path: Path, start_server: Any) -> None:
    """1, 7: init and serve a chat pilot that answers in words; the prompt's JSON example is
    sent as written; no response_format is sent, the extra request fields are."""
    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        manifest = _init(
            tmp_path,
            upstream,
            request={"seed": 7, "stop": ["\n\n"]},
            system="Ticket {ticket_id}.",  # the system message is not a template
        )
        said = (tmp_path / "init.out").read_text()
        assert "id fields" in said and "ticket_id" in said
        sent = httpx.get(f"{upstream.base}/admin/last", timeout=5).json()
        assert "response_format" not in sent and sent["seed"] == 7 and sent["stop"] == ["\n\n"]
        assert sent["messages"][-1]["content"].startswith(
            'Reply with one word, as in {"label": "positive"}. Text: '
        )
        server = start_server(manifest, NO_DB)
        r = server.client.post(
            "/v1/predict", json={"inputs": {"ticket_id": 9, "text": "I love it, perfect"}}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["output"], r.json()["route"]) == ("positive", "champion")
        sent = httpx.get(f"{upstream.base}/admin/last", timeout=5).json()["messages"]
        # the system message is not a template: its braces go out as written
        assert sent[0] == {"role": "system", "content": "Ticket {ticket_id}."}
        assert sent[-1]["content"].endswith("Text: I love it, perfect")
    finally:
        upstream.kill()


def test_invalid_answers_fall_back_per_row_keep_the_breaker_closed_and_are_billed(
    tmp_path: Path, start_server: Any
) -> None:
    """3, 4, 5: a 4-row batch with one unreadable answer keeps three model answers; an LLM
    that answers badly half the time keeps answering the other half (breaker closed); every
    decision's cost, fallbacks included, adds up to what the server's token counts imply."""
    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        manifest = _init(tmp_path, upstream)
        _guards(manifest)
        before, calls = _billed(upstream), upstream.count()
        start = httpx.get(f"{upstream.base}/admin/count", timeout=5).json()
        tokens = (start["prompt_tokens"], start["completion_tokens"])
        server = start_server(manifest, NO_DB)
        texts = ["great and wonderful", "awful and broken", "unsure what to say", "love it"]
        batch = server.client.post(
            "/v1/predict", json={"inputs": [{"ticket_id": 1, "text": t} for t in texts]}
        )
        assert batch.status_code == 200, batch.text
        got = [(d["output"], d["route"]) for d in batch.json()["decisions"]]
        assert got == [
            ("positive", "champion"),
            ("negative", "champion"),
            ("negative", "default"),
            ("positive", "champion"),
        ]
        ids = [d["id"] for d in batch.json()["decisions"]]

        upstream.mode("plain_flaky")  # every second answer is "I cannot tell."
        routes = []
        for _ in range(20):
            d = server.client.post(
                "/v1/predict", json={"inputs": {"ticket_id": 1, "text": "love it"}}
            ).json()
            routes.append(d["route"])
            ids.append(d["id"])
        assert routes.count("champion") == 10 and routes.count("default") == 10
        ready = server.client.get("/readyz").json()
        assert ready["checks"]["champion_callable"] is True
        assert upstream.count() - calls == 4 + 20  # the batch's rows, then every single call

        fell = server.client.get(f"/v1/decisions/{ids[2]}").json()
        assert (
            "v1: invalid answer:" in fell["reason"]
            and "names none of the labels" in (fell["reason"])
        )
        assert fell["cost"] > 0  # the unreadable answer was billed, and is on its decision
        logged = [server.client.get(f"/v1/decisions/{i}").json() for i in ids]
        assert sum(d["cost"] for d in logged) == pytest.approx(_billed(upstream) - before, rel=1e-9)
        billed = httpx.get(f"{upstream.base}/admin/count", timeout=5).json()
        assert sum(d["prompt_tokens"] for d in logged) == billed["prompt_tokens"] - tokens[0]
        assert sum(d["completion_tokens"] for d in logged) == (
            billed["completion_tokens"] - tokens[1]
        )
        metrics = server.client.get("/metrics").text
        assert 'shipway_invalid_answers_total{model_version="1"} 11.0' in metrics
        prompt_total = billed["prompt_tokens"] - tokens[0]
        assert f'shipway_tokens_total{{kind="prompt"}} {float(prompt_total)}' in metrics
        ops = server.client.post("/v1/monitor/run").json()["operations"]
        assert ops["invalid_answer_rate"] == pytest.approx(11 / 24)
        assert ops["prompt_tokens"] == prompt_total

        export = run_cli("decisions", "export", "-m", str(manifest), "--format", "csv", env=NO_DB)
        header = export.stdout.splitlines()[0].split(",")
        assert {"reason", "cost", "prompt_tokens", "completion_tokens"} <= set(header)
    finally:
        upstream.kill()


def test_counting_invalid_answers_can_open_the_breaker(tmp_path: Path, start_server: Any) -> None:
    """3: breaker.count_invalid: true opens it after the set number of unreadable answers;
    /readyz then says the champion is not callable, and ready only through the fallback."""
    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        manifest = _init(tmp_path, upstream)
        _guards(manifest, count_invalid=True)
        server = start_server(manifest, NO_DB)
        for _ in range(3):
            d = server.client.post(
                "/v1/predict", json={"inputs": {"ticket_id": 1, "text": "unsure"}}
            ).json()
            assert d["route"] == "default"
        calls = upstream.count()
        d = server.client.post(
            "/v1/predict", json={"inputs": {"ticket_id": 1, "text": "love it"}}
        ).json()
        assert d["route"] == "default" and upstream.count() == calls
        reason = server.client.get(f"/v1/decisions/{d['id']}").json()["reason"]
        assert "circuit breaker open" in reason
        ready = server.client.get("/readyz").json()
        assert ready["checks"]["champion_callable"] is False and ready["ready"] is True
        metrics = server.client.get("/metrics").text
        assert 'shipway_breaker_state{model_version="1"} 2.0' in metrics
    finally:
        upstream.kill()


def test_endpoint_settings_are_checked_when_the_manifest_loads() -> None:
    with pytest.raises(ValueError, match="answer: regex needs answer_pattern"):
        EndpointSpec(kind="chat", prompt="{text}", answer="regex")
    with pytest.raises(ValueError, match=r"cannot set \['messages'\]"):
        EndpointSpec(kind="chat", prompt="{text}", request={"messages": []})


def test_init_scores_an_endpoint_on_a_capped_holdout(tmp_path: Path) -> None:
    """6: a 1,000-row file costs at most --max-score-rows calls (the first one alone, as a
    check), and init says what scoring found and cost; a broken endpoint stops after one."""
    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        _init(tmp_path, upstream, "--max-score-rows", "50", "--concurrency", "4", rows=1000)
        assert upstream.count() == 50
        said = (tmp_path / "init.out").read_text()
        assert "scored 50 holdout rows over HTTP for" in said, said
        spec = yaml.safe_load((tmp_path / "svc" / "shipway.yaml").read_text())
        assert spec["output"]["labels"] == ["negative", "positive"]

        upstream.mode("error")
        again = tmp_path / "again"
        again.mkdir()
        before = upstream.count()
        res = run_cli(
            "init", "--model", f"{upstream.base}/v1/chat/completions",
            "--endpoint", str(tmp_path / "endpoint.yaml"), "--data", str(tmp_path / "reviews.csv"),
            "--target", "label", "--dir", str(again), env=NO_DB,
        )  # fmt: skip
        assert res.returncode == 1
        assert "the first test call to" in res.stderr and "HTTP 500" in res.stderr, res.stderr
        assert upstream.count() - before == 1
    finally:
        upstream.kill()


def test_a_prompt_change_is_a_version_shadowed_and_gated(tmp_path: Path, start_server: Any) -> None:
    """2: models add --prompt-file registers the same endpoint with another prompt as a new
    version, scored and gated beside the champion; models list tells the prompts apart; as a
    shadow it is called with its own prompt and compared, while callers get the champion's."""
    import time

    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        manifest = _init(tmp_path, upstream)
        url = f"{upstream.base}/v1/chat/completions"
        prompt = tmp_path / "prompt.txt"
        # the new prompt also names the id field: the version is given it
        prompt.write_text("Ticket {ticket_id}. Positive or negative, in one word? Text: {text}")
        res = run_cli("models", "add", "--model", url, "--prompt-file", str(prompt),
                      "-m", str(manifest), env=NO_DB)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "Registered version 2" in res.stdout and "gate: passed" in res.stdout, res.stdout
        listed = run_cli("models", "list", "--json", "-m", str(manifest), env=NO_DB)
        models = {m["version"]: m for m in json.loads(listed.stdout)["models"]}
        assert models[2]["endpoint"]["prompt"] == prompt.read_text()
        assert models[1]["endpoint"]["prompt"] == PROMPT
        assert models[1]["endpoint"]["prompt_sha256"] != models[2]["endpoint"]["prompt_sha256"]

        wrong = tmp_path / "wrong.txt"
        wrong.write_text("Label {review}")
        res = run_cli("models", "add", "--model", url, "--prompt-file", str(wrong),
                      "-m", str(manifest), env=NO_DB)  # fmt: skip
        assert res.returncode == 1 and "['review']" in res.stderr, res.stderr

        server = start_server(manifest, NO_DB)
        before = _billed(upstream)
        r = server.client.post("/v1/rollout/shadow", json={"version": 2, "reason": "new prompt"})
        assert r.status_code == 200, r.text
        answers = [
            server.client.post("/v1/predict", json={"inputs": {"ticket_id": 1, "text": t}}).json()
            for t in ("I love it, perfect", "awful and broken", "great product", "the worst")
        ]
        assert {(a["route"], a["model_version"]) for a in answers} == {("champion", 1)}
        time.sleep(1.0)  # shadows answer in the background
        status = server.client.get("/v1/rollout").json()
        shadow = {s["version"]: s for s in status["shadows"]}[2]
        assert shadow["compared"] == 4 and shadow["agreement"] == 1.0
        sent = httpx.get(f"{upstream.base}/admin/last", timeout=5).json()
        assert sent["messages"][-1]["content"].startswith("Ticket 1. Positive or negative")
        # the shadow's calls are billed too: answers' and shadows' costs add up to the bill
        ops = server.client.post("/v1/monitor/run").json()["operations"]
        assert ops["shadow_cost"] > 0
        assert ops["cost"] + ops["shadow_cost"] == pytest.approx(_billed(upstream) - before)
    finally:
        upstream.kill()


def test_rows_go_down_the_chain_one_by_one(tmp_path: Path, start_server: Any) -> None:
    """3, 4: rows the LLM answers unreadably go to keyword rules; a row the rules cannot answer
    (None) goes on to the default; the other rows keep the LLM's answers."""
    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        manifest = _init(tmp_path, upstream)
        edit_manifest(
            manifest,
            guards={
                "timeout_ms": 3000,
                "fallback": [
                    {"model": "python:tests.pilots.keywords:predict", "name": "keywords"},
                    {"default": {"output": "negative", "confidence": None}},
                ],
            },
        )
        server = start_server(manifest, NO_DB)
        texts = ["unsure but I love it", "awful and broken", "unsure about this", "perfect"]
        r = server.client.post(
            "/v1/predict", json={"inputs": [{"ticket_id": 1, "text": t} for t in texts]}
        )
        assert r.status_code == 200, r.text
        got = [(d["output"], d["route"]) for d in r.json()["decisions"]]
        assert got == [
            ("positive", "fallback:keywords"),
            ("negative", "champion"),
            ("negative", "default"),
            ("positive", "champion"),
        ]
        last = server.client.get(f"/v1/decisions/{r.json()['decisions'][2]['id']}").json()
        assert (
            "v1: invalid answer:" in last["reason"]
            and "keywords: invalid answer:" in (last["reason"])
        )
        assert last["cost"] > 0  # the LLM's unreadable answer was billed

        # one row's call fails outright: the rows answered keep their answers
        texts = ["crash and love", "awful", "perfect"]
        r = server.client.post(
            "/v1/predict", json={"inputs": [{"ticket_id": 1, "text": t} for t in texts]}
        )
        got = [(d["output"], d["route"]) for d in r.json()["decisions"]]
        assert got == [
            ("positive", "fallback:keywords"),
            ("negative", "champion"),
            ("positive", "champion"),
        ]
        crashed = server.client.get(f"/v1/decisions/{r.json()['decisions'][0]['id']}").json()
        assert "HTTP 500" in crashed["reason"]
    finally:
        upstream.kill()


def test_a_half_open_breaker_closes_on_an_answer_that_is_not_an_outage(
    tmp_path: Path, start_server: Any
) -> None:
    """3: after an outage opens the breaker, the trial call's unreadable (non-JSON) body is an
    answer, not an outage: the breaker closes instead of staying half-open for good."""
    import time

    upstream = Upstream()
    upstream.start(mode="plain")
    try:
        manifest = _init(tmp_path, upstream)
        _guards(manifest, failures=1, cooldown_s=1)
        server = start_server(manifest, NO_DB)
        ask = {"inputs": {"ticket_id": 1, "text": "love it"}}
        upstream.mode("error")
        assert server.client.post("/v1/predict", json=ask).json()["route"] == "default"
        assert server.client.get("/readyz").json()["checks"]["champion_callable"] is False
        time.sleep(1.2)
        upstream.mode("malformed")
        assert server.client.post("/v1/predict", json=ask).json()["route"] == "default"
        upstream.mode("plain")
        d = server.client.post("/v1/predict", json=ask).json()
        assert d["route"] == "champion"
        assert server.client.get("/readyz").json()["checks"]["champion_callable"] is True
    finally:
        upstream.kill()

"""Open Inference Protocol V2 with a real V2 client library, and a chat-completions model
endpoint whose answers a real text classifier computes (started by the test, loopback only)."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import Pilot, run_cli
from tests.test_guards import NO_DB, Upstream, edit_manifest
from tests.upstream_server import corpus

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


def test_tritonclient_round_trips_an_inference(
    workspace: Path, pilot: Pilot, start_server: Any
) -> None:
    server = start_server(workspace / "shipway.yaml", NO_DB)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("cancer")
        meta = client.get_model_metadata("cancer")
        names = [i["name"] for i in meta["inputs"]]
        assert len(names) == 30 and meta["versions"] == ["1"]

        rows = pilot.rows[:5]
        inputs = []
        for name in names:  # one FP64 tensor per field, sent as binary data (the default)
            t = httpclient.InferInput(name, [len(rows)], "FP64")
            t.set_data_from_numpy(np.array([r[name] for r in rows], dtype=np.float64))
            inputs.append(t)
        result = client.infer("cancer", inputs)
        outputs = result.as_numpy("output").tolist()
        conf = result.as_numpy("confidence").tolist()
        ids = [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("decision_id")]
        assert result.as_numpy("model_version").tolist() == [1] * 5

        direct = server.client.post("/v1/predict", json={"inputs": rows}).json()["decisions"]
        assert outputs == [d["output"] for d in direct]
        assert conf == pytest.approx([d["confidence"] for d in direct])
        logged = server.client.get(f"/v1/decisions/{ids[0]}").json()
        assert logged["inputs"] == rows[0] and logged["route"] == "champion"

        # one [N, F] tensor in contract order, as JSON, asking for two outputs only
        matrix = httpclient.InferInput("input", [2, 30], "FP64")
        matrix.set_data_from_numpy(
            np.array([[r[n] for n in names] for r in rows[:2]], dtype=np.float64),
            binary_data=False,
        )
        wanted = [
            httpclient.InferRequestedOutput("output", binary_data=False),
            httpclient.InferRequestedOutput("confidence", binary_data=True),
        ]
        res2 = client.infer("cancer", [matrix], outputs=wanted)
        assert res2.as_numpy("output").tolist() == outputs[:2]
        assert res2.as_numpy("confidence").tolist() == pytest.approx(conf[:2])
        assert res2.as_numpy("decision_id") is None

        bad = httpclient.InferInput(names[0], [1], "FP64")
        bad.set_data_from_numpy(np.array([1e9]))
        with pytest.raises(InferenceServerException) as info:
            client.infer("cancer", [bad])
        assert "contract_violation" in str(info.value)
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("nobody")
    finally:
        client.close()


def _texts(path: Path, n: int) -> None:
    texts, labels = corpus(n, seed=7)  # other sentences than the upstream was trained on
    rng = random.Random(3)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, lab in zip(texts, labels, strict=True):
            w.writerow([t + f" order {rng.randint(1000, 99999)}", lab])


def test_chat_endpoint_answers_are_computed_checked_and_costed(
    tmp_path: Path, start_server: Any
) -> None:
    upstream = Upstream()
    upstream.start()
    try:
        data = tmp_path / "reviews.csv"
        _texts(data, 60)
        endpoint = tmp_path / "endpoint.yaml"
        endpoint.write_text(
            yaml.safe_dump(
                {
                    "kind": "chat",
                    "model": "sentiment-small",
                    "system": 'You label customer reviews. Answer JSON: {"label", "confidence"}.',
                    "prompt": "Label this review as positive or negative. Text: {text}",
                    "output_field": "label",
                    "prompt_price_per_1k": 0.5,
                    "completion_price_per_1k": 1.5,
                }
            )
        )
        res = run_cli(
            "init",
            "--model",
            f"{upstream.base}/v1/chat/completions",
            "--endpoint",
            str(endpoint),
            "--data",
            str(data),
            "--target",
            "label",
            "--name",
            "reviews",
            "--dir",
            str(tmp_path / "svc"),
            env=NO_DB,
        )
        assert res.returncode == 0, res.stderr
        assert "accuracy=1.0000" in res.stdout or "accuracy=0.9" in res.stdout, res.stdout
        manifest = tmp_path / "svc" / "shipway.yaml"
        spec = yaml.safe_load(manifest.read_text())
        assert spec["endpoint"]["kind"] == "chat" and spec["contract"]["inputs"][0]["type"] == (
            "string"
        )
        edit_manifest(
            manifest,
            endpoint=spec["endpoint"],
            guards={
                "timeout_ms": 2000,
                "breaker": {"failures": 0},
                "output": {"json_schema": {"type": "string", "enum": ["negative", "positive"]}},
                "fallback": [{"default": {"output": "negative", "confidence": None}}],
            },
        )
        server = start_server(manifest, NO_DB)

        good = server.client.post(
            "/v1/predict", json={"inputs": {"text": "I love it, wonderful and perfect"}}
        ).json()
        assert good["output"] == "positive" and good["route"] == "champion"
        assert 0.5 < good["confidence"] <= 1.0
        bad = server.client.post(
            "/v1/predict", json={"inputs": {"text": "the worst, awful and broken"}}
        ).json()
        assert bad["output"] == "negative" and bad["route"] == "champion"
        logged = server.client.get(f"/v1/decisions/{good['id']}").json()
        # the upstream counts words as tokens: system and user messages in, 4 words out
        user = "Label this review as positive or negative. Text: I love it, wonderful and perfect"
        prompt_tokens = len(spec["endpoint"]["system"].split()) + len(user.split())
        expected = prompt_tokens / 1000 * 0.5 + 4 / 1000 * 1.5
        assert logged["cost"] == pytest.approx(expected), logged
        assert "shipway_cost_total" in server.client.get("/metrics").text

        upstream.mode("bad_label")  # the model now answers a label outside the output spec
        r = server.client.post("/v1/predict", json={"inputs": {"text": "great product"}}).json()
        assert r["route"] == "default" and r["output"] == "negative"
        reason = server.client.get(f"/v1/decisions/{r['id']}").json()["reason"]
        assert "'maybe'" in reason
    finally:
        upstream.kill()

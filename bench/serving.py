"""Serving throughput and latency: Shipway against a bare endpoint (and BentoML), one run.

    python bench/serving.py [--requests 4000] [--quick] [--client auto|python|wrk]

On the same model (scikit-learn StandardScaler + LogisticRegression trained on scikit-learn's
breast-cancer data, 30 numeric features, saved with joblib) and the same machine, in one run:

  (a) the model called in-process (no HTTP): predict_proba on one NumPy row and on 64 rows;
  (b) a bare Starlette endpoint (uvicorn, uvloop, httptools, access log off) in its own process:
      orjson in, NumPy array, the same model's predict_proba, orjson out; nothing else;
  (c) ``shipway serve`` (started with the CLI on a workspace made by ``shipway init``), with
      contract validation and the durable SQLite decision log on;
  (d) BentoML serving the same joblib file, when ``bench/.venv-bentoml`` has it installed;
  (e) the machine's HTTP ceiling: a Starlette endpoint on the same stack as (b) that parses the
      JSON body and returns a constant (no model, no checks), the most any Python server on
      this stack can answer.

Each server is measured with single-row requests and with batches of 64 rows per request, at
concurrency 1, 16 and 64, after a warm-up. Request bodies are real rows of the data set.

Load comes from a separate process per load run: by default this file's own lean client
(asyncio protocols on uvloop, one keep-alive HTTP/1.1 connection per concurrent worker,
pre-encoded request bytes, exact request counts), or ``wrk`` with a generated Lua script
(``--client wrk``). Every load run has a fixed request count and a time cap, and targets only
127.0.0.1. The client's and the server's CPU use are printed beside each figure (in % of one
core), since the machine may have as few as 2 cores. No figure is asserted.

This file also runs the pieces that must live in their own processes:
``serving.py _bare MODEL PORT`` (the bare endpoint) and ``serving.py _load ...`` (the client).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENTO_VENV = HERE / ".venv-bentoml"
BATCH = 64
CONCURRENCY = (1, 16, 64)
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- (b) the bare endpoint, run as its own process ---------------------------------------------


def _bare_main(model_path: str, port: int, frame: bool = False) -> None:
    """(b); ``frame``: the model takes a DataFrame (a ColumnTransformer pilot)."""
    import warnings

    import joblib
    import numpy as np
    import orjson
    import pandas as pd
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    model = joblib.load(model_path)
    names = [str(n) for n in model.feature_names_in_]
    classes = model.classes_.tolist()

    def answer(x: Any) -> list[dict[str, Any]]:
        proba = model.predict_proba(x)
        idx = proba.argmax(axis=1).tolist()
        return [{"output": classes[i], "confidence": float(proba[k, i])} for k, i in enumerate(idx)]

    async def predict(request: Request) -> Response:
        inputs = orjson.loads(await request.body())["inputs"]
        if frame:
            rows = [inputs] if isinstance(inputs, dict) else inputs
            out = answer(pd.DataFrame.from_records(rows, columns=names))
            body = out[0] if isinstance(inputs, dict) else {"decisions": out}
            return Response(orjson.dumps(body), media_type="application/json")
        if isinstance(inputs, dict):
            x = np.array([[inputs[n] for n in names]], dtype=np.float64)
            return Response(orjson.dumps(answer(x)[0]), media_type="application/json")
        x = np.array([[r[n] for n in names] for r in inputs], dtype=np.float64)
        return Response(orjson.dumps({"decisions": answer(x)}), media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = Starlette(
        routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz)]
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def _ceiling_main(port: int) -> None:
    """(e): parse the body, answer a constant. Nothing a real server could skip is skipped."""
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = orjson.dumps({"output": 1, "confidence": 0.5})

    async def predict(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(answer, media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = Starlette(
        routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz)]
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


# -- the load client, run as its own process ----------------------------------------------------


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and its descendants."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    total = 0.0
    for pid, used in cpu.items():
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += used
    return total


class _Phase:
    def __init__(self, request: bytes, count: int, deadline: float) -> None:
        self.request = request
        self.left = count
        self.deadline = deadline
        self.in_flight = 0
        self.latencies: list[float] = []
        self.ok = 0
        self.errors = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish_if_idle(self) -> None:
        if self.in_flight == 0 and not self.done.done():
            self.done.set_result(None)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: sends the next request as soon as a response is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.phase: _Phase | None = None
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.t0 = 0.0
        self.busy = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def start(self, phase: _Phase) -> None:
        self.phase = phase
        self._next()

    def _next(self) -> None:
        ph = self.phase
        assert ph is not None and self.transport is not None
        self.busy = False
        if ph.left <= 0 or time.monotonic() > ph.deadline or self.transport.is_closing():
            ph.finish_if_idle()
            return
        ph.left -= 1
        ph.in_flight += 1
        self.busy = True
        self.buf.clear()
        self.need = -1
        self.t0 = time.perf_counter()
        self.transport.write(ph.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need == -1:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self.need = end + 4 + int(head[i + 17 : j if j >= 0 else None])
            else:
                self.need = -2  # chunked: wait for the last chunk
        if self.need == -2:
            if not buf.endswith(b"0\r\n\r\n"):
                return
        elif len(buf) < self.need:
            return
        ph = self.phase
        assert ph is not None
        ph.latencies.append(time.perf_counter() - self.t0)
        ph.in_flight -= 1
        if self.status == 200:
            ph.ok += 1
        else:
            ph.errors += 1
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        ph = self.phase
        if ph is not None:
            if self.busy:
                self.busy = False
                ph.in_flight -= 1
                ph.errors += 1
            ph.finish_if_idle()


async def _load_async(a: argparse.Namespace) -> dict[str, Any]:
    body = Path(a.body).read_bytes()
    extra = f"{a.header}\r\n" if a.header else ""
    request = (
        f"POST {a.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(a.concurrency):
        _t, conn = await loop.create_connection(_Conn, "127.0.0.1", a.port)
        await conn.ready
        conns.append(conn)

    async def phase(count: int, cap: float) -> _Phase:
        ph = _Phase(request, count, time.monotonic() + cap)
        for c in conns:
            c.start(ph)
        await asyncio.wait_for(ph.done, cap + 30)
        return ph

    deadline = time.monotonic() + a.cap
    warm = await phase(a.warmup, a.cap / 4) if a.warmup else None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    srv0 = tree_cpu(a.server_pid) if a.server_pid else 0.0
    t0 = time.perf_counter()
    ph = await phase(a.requests, max(1.0, deadline - time.monotonic()))
    seconds = time.perf_counter() - t0
    srv1 = tree_cpu(a.server_pid) if a.server_pid else 0.0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = sorted(ph.latencies)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "requests": len(lat),
        "seconds": seconds,
        "rps": len(lat) / seconds if seconds else 0.0,
        "p50_ms": _pct(lat, 0.50),
        "p99_ms": _pct(lat, 0.99),
        "errors": ph.errors,
        "capped": len(lat) < a.requests,
        "answered_total": ph.ok + (warm.ok if warm else 0),
        "client_cpu_s": client_cpu,
        "server_cpu_s": (srv1 - srv0) if a.server_pid else None,
    }


def _pct(sorted_lat: list[float], q: float) -> float:
    if not sorted_lat:
        return float("nan")
    return sorted_lat[min(len(sorted_lat) - 1, int(len(sorted_lat) * q))] * 1000.0


def _load_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="serving.py _load")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/predict")
    p.add_argument("--body", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--cap", type=float, default=60.0, help="Seconds, warm-up included.")
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--header", default="", help="One extra request header, 'Name: value'.")
    a = p.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(_load_async(a))
    except ImportError:
        result = asyncio.run(_load_async(a))
    print(json.dumps(result))


# -- wrk, the alternative client -----------------------------------------------------------------

WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long s; long ns; } bench_ts; int clock_gettime(int, bench_ts *); ]]
local ts = ffi.new("bench_ts")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.s) + tonumber(ts.ns) * 1e-9 end
local f = io.open(BODY_PATH, "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
EXTRA_HEADER
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) n = 0; ok = 0; t0 = now(); t1 = 0 end
function response(status, headers, body)
  n = n + 1
  if status == 200 then ok = ok + 1 end
  if n == LIMIT then
    t1 = now()
    local m = io.open(MARKER, "w"); m:close()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local t = threads[1]
  local t1 = t:get("t1"); if t1 == 0 then t1 = now() end
  io.write(string.format('{"n":%d,"ok":%d,"seconds":%.6f,"p50_us":%d,"p99_us":%d}\n',
    t:get("n"), t:get("ok"), t1 - t:get("t0"), latency:percentile(50), latency:percentile(99)))
end
"""


def _wrk_once(
    port: int, path: str, body: Path, concurrency: int, count: int, cap: float, workdir: Path
) -> tuple[dict[str, Any], float]:
    marker = workdir / f"wrk-{os.getpid()}-{time.monotonic_ns()}.done"
    script = workdir / "bench.lua"
    extra = ""
    if AUTH_HEADER:
        name, _, value = AUTH_HEADER.partition(":")
        extra = f"wrk.headers[{json.dumps(name.strip())}] = {json.dumps(value.strip())}"
    script.write_text(
        WRK_SCRIPT.replace("BODY_PATH", json.dumps(str(body)))
        .replace("LIMIT", str(count))
        .replace("MARKER", json.dumps(str(marker)))
        .replace("EXTRA_HEADER", extra)
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, int(cap))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + cap + 30
    while proc.poll() is None and not marker.exists() and time.monotonic() < end:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # wrk sleeps out -d otherwise; SIGINT ends it now
    out, err = proc.communicate(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    marker.unlink(missing_ok=True)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no result: {out[-400:]} {err[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(lines[-1]), cpu


def _load_wrk(
    port: int,
    body: Path,
    concurrency: int,
    requests: int,
    path: str,
    warmup: int,
    cap: float,
    server_pid: int | None,
) -> dict[str, Any]:
    workdir = body.parent
    answered = 0
    if warmup:
        w, _ = _wrk_once(port, path, body, concurrency, warmup, cap / 4, workdir)
        answered += w["ok"]
    srv0 = tree_cpu(server_pid) if server_pid else 0.0
    r, cpu = _wrk_once(port, path, body, concurrency, requests, cap, workdir)
    srv1 = tree_cpu(server_pid) if server_pid else 0.0
    return {
        "requests": r["n"],
        "seconds": r["seconds"],
        "rps": r["n"] / r["seconds"],
        "p50_ms": r["p50_us"] / 1000.0,
        "p99_ms": r["p99_us"] / 1000.0,
        "errors": r["n"] - r["ok"],
        "capped": r["n"] < requests,
        "answered_total": answered + r["ok"],
        # wrk stops with up to concurrency-1 requests sent but not yet answered; the server
        # still answers (and Shipway logs) them, so the log may hold a few more rows than this.
        "unanswered_max": (concurrency - 1) * (2 if warmup else 1),
        "client_cpu_s": cpu,
        "server_cpu_s": (srv1 - srv0) if server_pid else None,
    }


# -- the parent: pilot, workspace, servers, runs -------------------------------------------------

CLIENT = "python"
"""Which load client ``load`` uses: "python" (this file's) or "wrk"; main() sets it."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_columns_pilot(workdir: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """A held-out-style pilot: 5,000 generated customers with numbers and categories, a
    ColumnTransformer (scaling, one-hot) and a logistic regression, fed as a DataFrame."""
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(7)
    n = 5000
    x = pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, n),
            "monthly_charges": np.round(rng.normal(65, 30, n).clip(18, 120), 2),
            "total_charges": np.round(rng.gamma(2.0, 1100, n), 2),
            "contract": rng.choice(["month", "one_year", "two_year"], n, p=[0.55, 0.25, 0.2]),
            "payment": rng.choice(["card", "bank", "check", "electronic"], n),
            "internet": rng.choice(["dsl", "fiber", "none"], n),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    logit = (
        -1.2
        - 0.04 * x["tenure"]
        + 0.02 * x["monthly_charges"]
        + (x["contract"] == "month") * 1.4
        + (x["internet"] == "fiber") * 0.6
    )
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    num = ["tenure", "monthly_charges", "total_charges"]
    cat = ["contract", "payment", "internet", "region"]
    model = make_pipeline(
        ColumnTransformer(
            [("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), cat)]
        ),
        LogisticRegression(max_iter=2000),
    ).fit(x, y)
    joblib.dump(model, workdir / "pilot.joblib")
    x.assign(churn=y).to_csv(workdir / "data.csv", index=False)
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in x.to_dict("records")
    ]
    return workdir / "pilot.joblib", workdir / "data.csv", rows


def build_pilot(workdir: Path) -> tuple[Path, Path, list[dict[str, float]]]:
    """Train the pilot; write pilot.joblib and data.csv; return them and the feature rows."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_breast_cancer(as_frame=True).frame
    x, y = frame.drop(columns=["target"]), frame["target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    joblib.dump(model, workdir / "pilot.joblib")
    frame.to_csv(workdir / "data.csv", index=False)
    rows = [{k: float(v) for k, v in r.items()} for r in x.to_dict("records")]
    return workdir / "pilot.joblib", workdir / "data.csv", rows


def predictor_key(manifest: Path) -> str:
    """A predictor API key for the benchmark service (the first key needs no credentials)."""
    out = subprocess.run(
        [
            *_shipway_cli(),
            "keys",
            "create",
            "--name",
            "bench",
            "--role",
            "predictor",
            "-m",
            str(manifest),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **_SQLITE_ENV, "SHIPWAY_API_KEY": ""},
    )
    return out.stdout.strip().splitlines()[-1]


def _shipway_cli() -> list[str]:
    script = Path(sys.executable).with_name("shipway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shipway"]


_SQLITE_ENV = {"SHIPWAY_DATABASE_URL": ""}
#: Sent with every request to Shipway: the server runs with authentication on, as in
#: production, so key checking is part of what is measured (set by measure_shipway).
AUTH_HEADER = ""
"""The workspace's own SQLite store, whatever the caller's environment points at."""


def init_shipway(workdir: Path, model: Path, data: Path, target: str = "target") -> Path:
    """``shipway init`` the pilot into workdir/svc with the CLI; return the manifest path."""
    svc = workdir / "svc"
    subprocess.run(
        [
            *_shipway_cli(),
            "init",
            "--model",
            str(model),
            "--data",
            str(data),
            "--target",
            target,
            "--name",
            "bench",
            "--dir",
            str(svc),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **_SQLITE_ENV},
    )
    return svc / "shipway.yaml"


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout:.0f}s")


def _descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
                parent[int(entry.name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    found, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


@contextlib.contextmanager
def server(
    cmd: list[str],
    ready: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own session; yield once ``ready`` answers 200; stop it after."""
    sink = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=sink,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_http(ready, proc)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise RuntimeError(f"{exc}\n{tail}") from None
        yield proc
    finally:
        kids = _descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in kids:  # workers that moved to a process group of their own (BentoML's)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if log:
            sink.close()  # type: ignore[union-attr]


def load(
    port: int,
    body: Path,
    concurrency: int,
    requests: int,
    path: str = "/v1/predict",
    *,
    warmup: int | None = None,
    cap: float = 60.0,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """One bounded load run from a separate process; returns rps, p50_ms, p99_ms, ..."""
    warm = max(2 * concurrency, requests // 10) if warmup is None else warmup
    if CLIENT == "wrk":
        return _load_wrk(port, body, concurrency, requests, path, warm, cap, server_pid)
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "_load",
            "--port",
            str(port),
            "--path",
            path,
            "--body",
            str(body),
            "--concurrency",
            str(concurrency),
            "--requests",
            str(requests),
            "--warmup",
            str(warm),
            "--cap",
            str(cap),
            "--server-pid",
            str(server_pid or 0),
            "--header",
            AUTH_HEADER,
        ],
        capture_output=True,
        text=True,
        timeout=cap + 90,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-1500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
        f"  errors {r['errors']}  client cpu {r['client_cpu_s']:.1f}s"
    )


def in_process(
    model_path: Path, rows: list[dict[str, Any]], calls: int, frame: bool = False
) -> dict[str, dict[str, float]]:
    """(a) predict_proba in this process on a NumPy array (a DataFrame for the columns pilot):
    one row, and BATCH rows."""
    import warnings

    import joblib
    import numpy as np
    import pandas as pd

    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    model = joblib.load(model_path)
    names = [str(n) for n in model.feature_names_in_]
    out = {}
    for kind, sample, n in (("single", rows[:1], calls), ("batch", rows[:BATCH], calls // 4)):
        if frame:
            x = pd.DataFrame.from_records(sample, columns=names)
        else:
            x = np.array([[r[k] for k in names] for r in sample], dtype=np.float64)
        for _ in range(100):
            model.predict_proba(x)
        lat = []
        perf = time.perf_counter
        t0 = perf()
        for _ in range(n):
            t = perf()
            model.predict_proba(x)
            lat.append(perf() - t)
        seconds = perf() - t0
        lat.sort()
        out[kind] = {
            "requests": n,
            "rps": n / seconds,
            "rows_per_s": n * len(sample) / seconds,
            "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99),
        }
    return out


BENTO_SERVICE = """
import typing
import warnings

import bentoml
import joblib
import numpy as np

warnings.filterwarnings("ignore", message="X does not have valid feature names")


@bentoml.service(workers=1, logging={{"access": {{"enabled": False}}}})
class Pilot:
    def __init__(self) -> None:
        self.model = joblib.load({model!r})
        self.names = [str(n) for n in self.model.feature_names_in_]
        self.classes = self.model.classes_.tolist()

    @bentoml.api
    def predict(self, inputs: typing.Union[dict, list]) -> dict:
        rows = [inputs] if isinstance(inputs, dict) else inputs
        x = np.array([[r[n] for n in self.names] for r in rows], dtype=np.float64)
        proba = self.model.predict_proba(x)
        idx = proba.argmax(axis=1).tolist()
        out = [{{"output": self.classes[i], "confidence": float(proba[k, i])}}
               for k, i in enumerate(idx)]
        return out[0] if isinstance(inputs, dict) else {{"decisions": out}}
"""


def sqlite_count(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM decisions").fetchone()[0])
    finally:
        con.close()


def _bento_version() -> str | None:
    py = BENTO_VENV / "bin" / "python"
    if not (BENTO_VENV / "bin" / "bentoml").exists():
        return None
    probe = (
        "import bentoml, importlib.util as u; print(bentoml.__version__, "
        "'uvloop' if u.find_spec('uvloop') else 'asyncio', "
        "'httptools' if u.find_spec('httptools') else 'h11')"
    )
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120)
    return r.stdout.strip() if r.returncode == 0 else None


def main() -> None:
    global CLIENT
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument(
        "--requests",
        type=int,
        default=4000,
        help="Single-row requests per figure at concurrency 16 and 64 (default "
        "4000, --quick 800); concurrency 1 and batches of 64 get a quarter "
        "(batches at concurrency 1 an eighth).",
    )
    ap.add_argument("--quick", action="store_true", help="A short run (under a minute).")
    ap.add_argument(
        "--client",
        choices=("auto", "python", "wrk"),
        default="python",
        help="Load client: this file's asyncio client (default), or wrk (auto: wrk when on PATH).",
    )
    ap.add_argument(
        "--cap",
        type=float,
        default=None,
        help="Time cap per load run in seconds (default 60, --quick 20).",
    )
    ap.add_argument("--no-bentoml", action="store_true", help="Skip BentoML even if present.")
    ap.add_argument(
        "--pilot",
        choices=("cancer", "columns"),
        default="cancer",
        help="cancer: 30 numbers, StandardScaler + LogisticRegression (NumPy input); columns: "
        "numbers and categories through a ColumnTransformer (DataFrame input).",
    )
    ap.add_argument("--keep", action="store_true", help="Keep the temporary workspace.")
    args = ap.parse_args()
    n = 800 if args.quick else args.requests
    cap = args.cap or (20.0 if args.quick else 60.0)
    CLIENT = args.client
    if CLIENT == "auto":
        CLIENT = "wrk" if shutil.which("wrk") else "python"
    if CLIENT == "wrk" and not shutil.which("wrk"):
        ap.error("--client wrk: wrk is not on PATH (apt-get install -y wrk)")
    counts = {
        ("single", 1): n // 4,
        ("single", 16): n,
        ("single", 64): n,
        ("batch", 1): n // 8,
        ("batch", 16): n // 4,
        ("batch", 64): n // 4,
    }

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="shipway-bench-serving-"))
    try:
        _run(args, n, cap, counts, work)
    finally:
        if args.keep:
            print(f"workspace kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total time {time.monotonic() - started:.0f} s")


def _run(
    args: argparse.Namespace, n: int, cap: float, counts: dict[tuple[str, int], int], work: Path
) -> None:
    import platform

    frame = args.pilot == "columns"
    if frame:
        model, data, rows = build_columns_pilot(work)
        manifest = init_shipway(work, model, data, "churn")
    else:
        model, data, rows = build_pilot(work)
        manifest = init_shipway(work, model, data)
    db = manifest.parent / ".shipway" / "shipway.db"
    bodies = {"single": work / "single.json", "batch": work / f"batch{BATCH}.json"}
    bodies["single"].write_text(json.dumps({"inputs": rows[0]}))
    bodies["batch"].write_text(json.dumps({"inputs": rows[100 : 100 + BATCH]}))
    rows_per = {"single": 1, "batch": BATCH}

    client = (
        "wrk (1 thread, Lua script)"
        if CLIENT == "wrk"
        else "bench/serving.py's asyncio client on uvloop"
    )
    print(
        f"Shipway serving benchmark: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {n} single-row requests per figure at c=16/64, "
        f"time cap {cap:.0f} s per load run"
    )
    print(f"load client: {client}, one process per load run, 127.0.0.1 only")
    print(
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
        "(anything else running on the machine skews every figure)"
    )

    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    ip = in_process(model, rows, 800 if args.quick else 3000, frame)
    for kind in ("single", "batch"):
        results[("in-process", kind, 1)] = {**ip[kind], "errors": 0}

    def measure(who: str, port: int, path: str, pid: int, kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            for c in CONCURRENCY:
                r = load(port, bodies[kind], c, counts[(kind, c)], path, cap=cap, server_pid=pid)
                r["rows_per_s"] = r["rps"] * rows_per[kind]
                results[(who, kind, c)] = r
                print(
                    f"  {who:8s} {kind:6s} c={c:<3d} {r['rps']:8.0f} req/s  "
                    f"p50 {r['p50_ms']:7.2f} ms",
                    flush=True,
                )

    port = free_port()
    with server(
        [sys.executable, str(Path(__file__).resolve()), "_ceiling", str(port)],
        f"http://127.0.0.1:{port}/healthz",
        log=work / "ceiling.log",
    ) as proc:
        measure("ceiling", port, "/v1/predict", proc.pid, ("single", "batch"))

    port = free_port()
    with server(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "_bare",
            str(model),
            str(port),
            "frame" if frame else "array",
        ],
        f"http://127.0.0.1:{port}/healthz",
        log=work / "bare.log",
    ) as proc:
        measure("bare", port, "/v1/predict", proc.pid, ("single", "batch"))

    port = free_port()
    log_before = sqlite_count(db)
    global AUTH_HEADER
    AUTH_HEADER = f"Authorization: Bearer {predictor_key(manifest)}"
    prod = {**_SQLITE_ENV, "SHIPWAY_DEV_MODE": "", "SHIPWAY_SECRET_KEY": os.urandom(24).hex()}
    with server(
        [
            *_shipway_cli(),
            "serve",
            str(manifest),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        f"http://127.0.0.1:{port}/readyz",
        env=prod,
        log=work / "shipway.log",
    ) as proc:
        measure("shipway", port, "/v1/predict", proc.pid, ("single", "batch"))
    AUTH_HEADER = ""
    logged = sqlite_count(db) - log_before
    answered = sum(
        r["answered_total"] * rows_per[k] for (who, k, _c), r in results.items() if who == "shipway"
    )
    slack = sum(
        r.get("unanswered_max", 0) * rows_per[k]
        for (who, k, _c), r in results.items()
        if who == "shipway"
    )

    bento_note = _bento_version()
    if args.no_bentoml or frame:
        bento_note = None
        print("(d) BentoML skipped (--no-bentoml, or the columns pilot)")
    elif bento_note is None:
        print("(d) BentoML skipped: bench/.venv-bentoml has no bentoml (see bench/README.md)")
    else:
        svc_dir = work / "bento"
        svc_dir.mkdir()
        (svc_dir / "service.py").write_text(textwrap.dedent(BENTO_SERVICE.format(model=str(model))))
        port = free_port()
        try:
            with server(
                [
                    str(BENTO_VENV / "bin" / "bentoml"),
                    "serve",
                    "service:Pilot",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                f"http://127.0.0.1:{port}/readyz",
                cwd=svc_dir,
                env={"BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(work / "bh")},
                log=work / "bentoml.log",
            ) as proc:
                measure("bentoml", port, "/predict", proc.pid, ("single", "batch"))
        except RuntimeError as exc:
            print(f"(d) BentoML failed, its figures are left out: {exc}")
            bento_note = None

    _report(results, counts, logged, answered, slack, db.relative_to(work), bento_note)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _report(
    results: dict[tuple[str, str, int], dict[str, Any]],
    counts: dict[tuple[str, int], int],
    logged: int,
    answered: int,
    slack: int,
    db: Path,
    bento_note: str | None,
) -> None:
    print()
    print(
        "(a) in-process = predict_proba on a NumPy array, no HTTP; (b) bare = Starlette + "
        "orjson + the model;"
    )
    print(
        "(c) shipway = shipway serve with validation and the decision log; (d) bentoml"
        + (f" {bento_note}" if bento_note else " (skipped)")
    )
    print("(e) ceiling = Starlette + orjson parsing the body and answering a constant")
    print(
        "client/server cpu: CPU time of the load client / of the server process tree over "
        "the measured run, in % of one core"
    )
    print()
    head = (
        f"{'workload':14s} {'server':11s} {'conc':>4s} {'requests':>8s} {'req/s':>9s} "
        f"{'rows/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'client':>7s} "
        f"{'server':>7s}"
    )
    print(head)
    print("-" * len(head))
    for kind in ("single", "batch"):
        label = "single row" if kind == "single" else f"batch of {BATCH}"
        for who in ("in-process", "ceiling", "bare", "shipway", "bentoml"):
            for c in CONCURRENCY:
                r = results.get((who, kind, c))
                if r is None:
                    continue
                secs = r.get("seconds")
                cli = f"{100 * r['client_cpu_s'] / secs:6.0f}%" if secs else f"{'-':>7s}"
                srv = (
                    f"{100 * r['server_cpu_s'] / secs:6.0f}%"
                    if secs and r.get("server_cpu_s") is not None
                    else f"{'-':>7s}"
                )
                name = {
                    "in-process": "(a) in-proc",
                    "bare": "(b) bare",
                    "shipway": "(c) shipway",
                    "bentoml": "(d) bentoml",
                    "ceiling": "(e) ceiling",
                }[who]
                flag = " capped" if r.get("capped") else ""
                print(
                    f"{label:14s} {name:11s} {c if who != 'in-process' else '-':>4} "
                    f"{r['requests']:8d} {r['rps']:9.0f} {r['rows_per_s']:9.0f} "
                    f"{r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['errors']:6d} {cli} {srv}"
                    f"{flag}"
                )
        print()

    def rps(who: str, kind: str, c: int) -> float | None:
        r = results.get((who, kind, c))
        return r["rps"] if r else None

    print("ratios (same run, same model, same machine):")
    for kind in ("single", "batch"):
        label = "single row" if kind == "single" else f"batch of {BATCH}"
        for c in (16, 64):
            s, b, d = rps("shipway", kind, c), rps("bare", kind, c), rps("bentoml", kind, c)
            assert s is not None and b is not None
            e = rps("ceiling", kind, c)
            line = f"  {label:12s} c={c:<3d} throughput shipway/bare {s / b:5.2f}"
            if e:
                line += f"   shipway/ceiling {s / e:5.2f}   bare/ceiling {b / e:5.2f}"
            if d:
                line += f"   shipway/bentoml {s / d:5.2f}   bentoml/bare {d / b:5.2f}"
            print(line)
    for kind in ("single", "batch"):
        s16 = results[("shipway", kind, 16)]
        label = "single row" if kind == "single" else f"batch of {BATCH}"
        print(f"  {label:12s} c=16  shipway p99/p50 {s16['p99_ms'] / s16['p50_ms']:5.2f}")
    for kind in ("single", "batch"):
        label = "single row" if kind == "single" else f"batch of {BATCH}"
        s1, b1 = results[("shipway", kind, 1)], results[("bare", kind, 1)]
        a = results[("in-process", kind, 1)]
        print(
            f"  {label:12s} c=1   p50 latency overhead shipway - in-process model call "
            f"{s1['p50_ms'] - a['p50_ms']:+7.3f} ms"
        )
        line = (
            f"  {label:12s} c=1   p50 latency overhead shipway - bare "
            f"{s1['p50_ms'] - b1['p50_ms']:+7.3f} ms ({s1['p50_ms']:.3f} vs "
            f"{b1['p50_ms']:.3f})"
        )
        d1 = results.get(("bentoml", kind, 1))
        if d1:
            line += f"; shipway - bentoml {s1['p50_ms'] - d1['p50_ms']:+.3f} ms"
        print(line)
    print()
    ok = logged >= answered and logged - answered <= slack
    print(
        f"decision log ({db}): {logged} rows in table decisions after the shipway run; "
        f"{answered} rows answered with 200 (warm-ups included)"
    )
    if slack:
        print(
            f"  (wrk abandons up to {slack} rows in flight when it stops; the server still "
            "answered and logged those)"
        )
    print(f"  every answered row logged: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        _bare_main(sys.argv[2], int(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "frame")
    elif len(sys.argv) > 1 and sys.argv[1] == "_ceiling":
        _ceiling_main(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        _load_main(sys.argv[2:])
    else:
        main()

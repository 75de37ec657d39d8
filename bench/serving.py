"""Serving throughput and latency: Shipway against a bare endpoint (and BentoML), one run.

    python bench/serving.py [--requests 4000] [--quick]

On the same model (scikit-learn StandardScaler + LogisticRegression on the bundled
breast-cancer data, 30 features) and the same machine, in one run:

  (a) the model called in-process (no HTTP): rows/s, single rows and batches of 64;
  (b) a bare Starlette endpoint (uvicorn, uvloop, httptools) calling the same model;
  (c) ``shipway serve`` with contract validation and the durable decision log on;
  (d) BentoML serving the same model, when ``bench/.venv-bentoml`` has it installed.

Load comes from ``bench/_loadgen.py`` in a separate process (keep-alive connections, bounded
request count, 127.0.0.1 only). Ratios (c)/(b) and (c)/(d) are printed; no figure is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENTO_VENV = HERE / ".venv-bentoml"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_pilot(workdir: Path) -> tuple[Path, Path, list[dict[str, float]]]:
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


def init_shipway(workdir: Path, model: Path, data: Path) -> Path:
    from shipway.lifecycle.onboard import init_service
    from shipway.settings import Settings

    res = init_service(model=str(model), data=data, target="target", name="bench",
                       directory=workdir / "svc", settings=Settings(database_url=None),
                       actor="bench")
    return res.manifest_path


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s")


@contextlib.contextmanager
def server(cmd: list[str], ready: str, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(ready, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def load(port: int, body: Path, concurrency: int, requests: int, path: str = "/v1/predict"
         ) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_loadgen.py"), "--port", str(port), "--path", path,
         "--body", str(body), "--concurrency", str(concurrency), "--requests", str(requests),
         "--warmup", str(max(100, requests // 10)), "--timeout", "120"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process(model_path: Path, rows: list[dict[str, float]]) -> dict[str, float]:
    import warnings

    import joblib
    import numpy as np

    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    model = joblib.load(model_path)
    names = list(model.feature_names_in_)
    one = np.array([[rows[0][n] for n in names]])
    batch = np.array([[r[n] for n in names] for r in rows[:64]])
    n1 = 2000
    t1 = timeit.timeit(lambda: model.predict_proba(one), number=n1)
    n64 = 300
    t64 = timeit.timeit(lambda: model.predict_proba(batch), number=n64)
    return {"single_rows_per_s": n1 / t1, "single_ms": t1 / n1 * 1000,
            "batch64_rows_per_s": 64 * n64 / t64}


BENTO_SERVICE = '''
import joblib, numpy as np, warnings
import bentoml
warnings.filterwarnings("ignore", message="X does not have valid feature names")

@bentoml.service(workers=1)
class Pilot:
    def __init__(self) -> None:
        self.model = joblib.load({model!r})
        self.names = [str(n) for n in self.model.feature_names_in_]
        self.classes = self.model.classes_.tolist()

    @bentoml.api
    def predict(self, inputs: dict) -> dict:
        x = np.array([[inputs[n] for n in self.names]], dtype=np.float64)
        p = self.model.predict_proba(x)[0]
        i = int(p.argmax())
        return {{"output": self.classes[i], "confidence": float(p[i])}}
'''


def sqlite_count(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM decisions").fetchone()[0])
    finally:
        con.close()


def fmt(r: dict[str, Any]) -> str:
    return (f"{r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
            f"  errors {r['errors']}  client cpu {r['client_cpu_s']:.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4000, help="Requests per measurement.")
    ap.add_argument("--quick", action="store_true", help="A short run (about a minute).")
    ap.add_argument("--no-bentoml", action="store_true", help="Skip BentoML even if present.")
    args = ap.parse_args()
    n = 1000 if args.quick else args.requests
    work = Path(tempfile.mkdtemp(prefix="shipway-bench-"))
    model, data, rows = build_pilot(work)
    manifest = init_shipway(work, model, data)
    db = manifest.parent / ".shipway" / "shipway.db"
    one = work / "one.json"
    one.write_text(json.dumps({"inputs": rows[0]}))
    batch = work / "batch64.json"
    batch.write_text(json.dumps({"inputs": rows[:64]}))

    print(f"shipway serving benchmark — {n} requests per figure, loopback, "
          f"{os.cpu_count()} cores")
    ip = in_process(model, rows)
    print(f"(a) in-process predict_proba: single row {ip['single_ms']:.3f} ms "
          f"({ip['single_rows_per_s']:.0f} rows/s); batches of 64: "
          f"{ip['batch64_rows_per_s']:.0f} rows/s")

    scenarios = [("single c=1", one, 1, max(200, n // 8), 1), ("single c=16", one, 16, n, 1),
                 ("single c=64", one, 64, n, 1), ("batch64 c=16", batch, 16, n // 8, 64)]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    bare_port, ship_port = free_port(), free_port()
    with server([sys.executable, str(HERE / "_bare_app.py"), str(model), str(bare_port)],
                f"http://127.0.0.1:{bare_port}/healthz"):
        for name, body, c, reqs, _rows in scenarios:
            results.setdefault(name, {})["bare"] = load(bare_port, body, c, reqs)
    env = {"SHIPWAY_DATABASE_URL": ""}
    with server([sys.executable, "-m", "shipway", "serve", str(manifest), "--port",
                 str(ship_port), "--log-level", "warning"],
                f"http://127.0.0.1:{ship_port}/readyz", env=env):
        logged_ok = True
        for name, body, c, reqs, rows_per in scenarios:
            before = sqlite_count(db)
            r = load(ship_port, body, c, reqs)
            results[name]["shipway"] = r
            after = sqlite_count(db)
            r["logged"] = after - before
            r["expected_logged"] = r["answered_total"] * rows_per
            logged_ok &= r["logged"] == r["expected_logged"]
    bento = BENTO_VENV / "bin" / "bentoml"
    if bento.exists() and not args.no_bentoml:
        svc_dir = work / "bento"
        svc_dir.mkdir()
        (svc_dir / "service.py").write_text(textwrap.dedent(BENTO_SERVICE.format(
            model=str(model))))
        bport = free_port()
        try:
            with server([str(bento), "serve", "service:Pilot", "--port", str(bport),
                         "--host", "127.0.0.1"], f"http://127.0.0.1:{bport}/readyz",
                        cwd=svc_dir, env={"BENTOML_DO_NOT_TRACK": "true"}):
                for name, body, c, reqs, rows_per in scenarios:
                    if rows_per == 1:
                        results[name]["bentoml"] = load(bport, body, c, reqs, path="/predict")
        except RuntimeError as exc:
            print(f"(d) BentoML did not start: {exc}")
    else:
        print("(d) BentoML skipped (create bench/.venv-bentoml with bentoml installed)")

    print()
    for name, _body, _c, _reqs, rows_per in scenarios:
        print(name + (f" ({rows_per} rows/request)" if rows_per > 1 else ""))
        for who in ("bare", "shipway", "bentoml"):
            if who in results[name]:
                print(f"  {who:8s} {fmt(results[name][who])}")
    print()
    print("ratios (same run):")
    for name in ("single c=16", "single c=64", "batch64 c=16"):
        b, s = results[name]["bare"], results[name]["shipway"]
        line = f"  {name:13s} shipway/bare throughput {s['rps'] / b['rps']:.2f}"
        if "bentoml" in results[name]:
            line += f"   shipway/bentoml {s['rps'] / results[name]['bentoml']['rps']:.2f}"
        print(line)
    b1, s1 = results["single c=1"]["bare"], results["single c=1"]["shipway"]
    print(f"  p50 overhead at c=1: {s1['p50_ms'] - b1['p50_ms']:+.3f} ms "
          f"({s1['p50_ms']:.3f} vs {b1['p50_ms']:.3f})")
    print(f"  decision log: every answered row committed: {'yes' if logged_ok else 'NO'} "
          f"({sum(r['shipway']['logged'] for r in results.values())} rows)")


if __name__ == "__main__":
    main()

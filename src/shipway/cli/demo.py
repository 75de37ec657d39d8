"""``shipway demo``: a pilot taken to a running service in one command.

In a workspace it trains a small pilot on scikit-learn's bundled breast-cancer data (plus a
made-up ``clinic`` category so the contract has one), runs ``init``, starts ``shipway serve`` as
a real process, replays realistic traffic (valid rows, a few invalid ones, and a segment whose
measurements are shifted), and reports what happened.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from shipway.errors import ShipwayError

FEATURES = [
    "mean radius",
    "mean texture",
    "mean perimeter",
    "mean area",
    "mean smoothness",
    "mean compactness",
    "mean concavity",
    "mean concave points",
    "mean symmetry",
    "mean fractal dimension",
]
CLINICS = ["north", "south", "east", "west"]


def build_pilot(workdir: Path, seed: int = 7) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Train the pilot; return (model file, data file, held-back rows for traffic)."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = load_breast_cancer(as_frame=True).frame[[*FEATURES, "target"]].copy()
    rng = np.random.default_rng(seed)
    frame.insert(len(FEATURES), "clinic", rng.choice(CLINICS, size=len(frame)))
    frame = frame.rename(columns={"target": "malignant"})
    frame["malignant"] = 1 - frame["malignant"]  # the bundled target is 1 = benign
    order = rng.permutation(len(frame))
    cut = int(len(frame) * 0.75)
    pilot, later = frame.iloc[order[:cut]], frame.iloc[order[cut:]]
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), FEATURES),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["clinic"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=2000)),
        ]
    )
    model.fit(pilot.drop(columns=["malignant"]), pilot["malignant"])
    model_path = workdir / "pilot.joblib"
    data_path = workdir / "pilot_data.csv"
    joblib.dump(model, model_path)
    pilot.to_csv(data_path, index=False)
    traffic = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in later.drop(columns=["malignant"]).to_dict("records")
    ]
    return model_path, data_path, traffic


def _invalid(row: dict[str, Any], rnd: random.Random) -> tuple[dict[str, Any], str]:
    bad = dict(row)
    kind = rnd.choice(["max", "type", "required", "unknown_field", "category"])
    if kind == "max":
        bad["mean radius"] = 250.0
    elif kind == "type":
        bad["mean area"] = "large"
    elif kind == "required":
        del bad["mean texture"]
    elif kind == "unknown_field":
        bad["patient_name"] = "Jane Doe"
    else:
        bad["clinic"] = "central"
    return bad, kind


def _shifted(row: dict[str, Any]) -> dict[str, Any]:
    s = dict(row)
    s["mean radius"] = round(s["mean radius"] * 1.15, 3)
    s["mean texture"] = round(s["mean texture"] * 1.15, 3)
    return s


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ShipwayError(f"the demo service exited early with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise ShipwayError(f"the demo service did not become ready within {timeout:.0f} s")


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.rows_answered = 0
        self.rejected: Counter[str] = Counter()
        self.status: Counter[int] = Counter()
        self.latency_ms: list[float] = []
        self.shifted = 0

    def table(self, title: str) -> Table:
        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        lat = np.array(self.latency_ms) if self.latency_ms else np.array([0.0])
        t.add_row("requests sent", str(self.requests))
        t.add_row("rows answered (logged)", str(self.rows_answered))
        t.add_row("  of them from the shifted segment", str(self.shifted))
        t.add_row("requests rejected (422)", str(sum(self.rejected.values())))
        for reason, n in self.rejected.most_common():
            t.add_row(f"  {reason}", str(n))
        other = {k: v for k, v in self.status.items() if k not in (200, 422)}
        if other:
            t.add_row("other statuses", ", ".join(f"{k}: {v}" for k, v in sorted(other.items())))
        t.add_row(
            "latency p50 / p99",
            f"{np.percentile(lat, 50):.2f} ms / {np.percentile(lat, 99):.2f} ms",
        )
        return t


def replay(
    base: str, traffic: list[dict[str, Any]], seconds: float, tally: Tally, key: str = ""
) -> None:
    """Send traffic for ``seconds``: mostly valid rows, some batches, 5% invalid, a shift."""
    rnd = random.Random(11)
    deadline = time.monotonic() + seconds
    i = 0
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=base, timeout=10.0, headers=headers) as client:
        while time.monotonic() < deadline:
            row = traffic[i % len(traffic)]
            i += 1
            # a third of the traffic is the shifted segment, in every part of the replay, so a
            # short or slow run shows the same share as a long one
            phase_shift = i % 3 == 2
            roll = rnd.random()
            if roll < 0.05:
                body, _ = _invalid(row, rnd)
                payload: dict[str, Any] = {"inputs": body}
                shifted = 0
            elif roll < 0.15:
                rows = [traffic[(i + k) % len(traffic)] for k in range(8)]
                if phase_shift:
                    rows = [_shifted(r) for r in rows]
                payload = {"inputs": rows}
                shifted = len(rows) if phase_shift else 0
            else:
                payload = {"inputs": _shifted(row) if phase_shift else row}
                shifted = 1 if phase_shift else 0
            t0 = time.perf_counter()
            resp = client.post("/v1/predict", json=payload)
            tally.latency_ms.append((time.perf_counter() - t0) * 1000)
            tally.requests += 1
            tally.status[resp.status_code] += 1
            if resp.status_code == 200:
                body_out = resp.json()
                n = len(body_out["decisions"]) if "decisions" in body_out else 1
                tally.rows_answered += n
                tally.shifted += shifted
            elif resp.status_code == 422:
                first = resp.json()["error"]["fields"][0]
                tally.rejected[f"{first['rule']} ({first['field']})"] += 1
            time.sleep(0.002)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(*, duration: float | None, port: int, workdir: Path | None, console: Console) -> int:
    from shipway.lifecycle.onboard import init_service
    from shipway.settings import Settings

    if not _port_free(port):
        taken, port = port, _free_port()
        console.print(
            f"port {taken} is taken on 127.0.0.1; the demo uses port {port} instead "
            "(choose one with --port)"
        )
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shipway-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]Shipway demo")
    console.print(f"workspace: {workdir}")
    with console.status("Training a pilot on scikit-learn's breast-cancer data..."):
        model_path, data_path, traffic = build_pilot(workdir)
    console.print(f"1. pilot: {model_path.name} trained on {data_path.name}")
    # The demo keeps its own state beside its manifest, whatever SHIPWAY_DATABASE_URL says.
    settings = Settings(database_url=None)
    with console.status("shipway init: inferring the contract, scoring on a holdout..."):
        res = init_service(
            model=str(model_path),
            data=data_path,
            target="malignant",
            name="demo-cancer",
            directory=workdir,
            settings=settings,
            actor="cli:demo",
            force=True,
        )
    scores = ", ".join(f"{k} {v:.3f}" for k, v in res.metrics.items())
    console.print(
        f"2. shipway init: {res.manifest_path.name} with {len(res.manifest.contract.inputs)} "
        f"inputs; model v{res.version} registered; holdout {scores}"
    )
    # Production-like: authentication on, a real secret, a key per use.
    from shipway.parts import ServiceParts

    with ServiceParts.open(res.manifest_path, settings) as parts:
        keys = parts.keys
        _info, traffic_key = keys.create(name="demo-traffic", role="predictor", actor="cli:demo")
        _info, viewer_key = keys.create(name="demo-viewer", role="viewer", actor="cli:demo")
        _info, operator_key = keys.create(name="demo-operator", role="operator", actor="cli:demo")
    console.print(
        "   API keys: demo-traffic (predictor), demo-viewer (viewer), demo-operator (operator)"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("SHIPWAY_DATABASE_URL", "SHIPWAY_DEV_MODE")
    }
    env["SHIPWAY_SECRET_KEY"] = secrets.token_hex(32)
    cmd = [
        sys.executable,
        "-m",
        "shipway",
        "serve",
        str(res.manifest_path),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        console.print(f"3. shipway serve: ready at {base}")
        tally = Tally()
        seconds = max(5.0, (duration - 8.0)) if duration is not None else 20.0
        with console.status(f"4. replaying traffic for {seconds:.0f} s..."):
            replay(base, traffic, seconds, tally, traffic_key)
        console.print(tally.table("What happened"))
        logged = sum(1 for _ in _decisions(res.manifest_path))
        console.print(f"decision log: {logged} decisions committed (every answered row)")
        _monitor_summary(base, operator_key, console)
        console.print(
            f"Read-only key for the routes below (send as 'Authorization: Bearer KEY'):"
            f"\n  {viewer_key}"
        )
        console.print("Open:")
        for path, what in [
            ("/docs", "the API, with the contract as its schema"),
            ("/metrics", "Prometheus metrics"),
            ("/readyz", "readiness"),
            ("/v1/service", "the service, its model and contract"),
        ]:
            console.print(f"  {base}{path}  {what}")
        console.print(
            f"Export the log: shipway decisions export -m {res.manifest_path} --format csv"
        )
        if duration is None:
            console.print("Serving until Ctrl-C.")
            with contextlib.suppress(KeyboardInterrupt):
                proc.wait()
        return 0 if tally.rows_answered > 0 else 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()


def _monitor_summary(base: str, key: str, console: Console) -> None:
    """Run the monitor on the traffic just sent and say which inputs drifted."""
    try:
        r = httpx.post(
            f"{base}/v1/monitor/run", timeout=60, headers={"Authorization": f"Bearer {key}"}
        )
        r.raise_for_status()
    except httpx.HTTPError as exc:
        console.print(f"monitor: could not run ({exc})")
        return
    drift = r.json().get("drift")
    if not drift:
        console.print(f"monitor: {r.json().get('drift_skipped', 'no drift figures')}")
        return
    names = drift["drifted"]
    console.print(
        f"monitor: {len(names)} of {len(drift['features'])} inputs drifted from the pilot data "
        f"(the shifted segment): {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
    )
    console.print("  see: shipway monitor report (or GET /v1/monitor)")


def _decisions(manifest_path: Path) -> Any:
    from shipway.decisions import iter_decisions
    from shipway.parts import ServiceParts
    from shipway.settings import Settings

    with ServiceParts.open(manifest_path, Settings(database_url=None)) as parts:
        yield from iter_decisions(parts.store.engine, service=parts.name)


__all__ = ["build_pilot", "run_demo"]

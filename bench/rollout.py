"""The cost of routing and shadowing: throughput with a shadow attached, in one run.

    python bench/rollout.py [--requests 4000]

Serves the benchmark pilot with ``shipway serve`` and measures single-row throughput at
concurrency 16 three times in one run: champion only; with a canary taking 20%; and with a
shadow version attached (the same model registered again, mirrored every answered row).
Prints the ratios against champion only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import build_pilot, fmt, free_port, init_shipway, load, server


def move(port: int, name: str, body: dict) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/rollout/{name}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipway-bench-rollout-"))
    model, data, rows = build_pilot(work)
    manifest = init_shipway(work, model, data)
    from shipway.lifecycle.versions import add_version
    from shipway.settings import Settings
    from shipway.store.location import open_manifest

    m, _loc, store = open_manifest(manifest, Settings(database_url=None))
    add_version(store, m, model=str(model), note="same model, for the shadow", actor="bench")
    store.close()
    one = work / "one.json"
    one.write_text(json.dumps({"inputs": rows[0]}))
    port = free_port()
    results = {}
    with server(
        [
            sys.executable,
            "-m",
            "shipway",
            "serve",
            str(manifest),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--dev",
        ],
        f"http://127.0.0.1:{port}/readyz",
        env={"SHIPWAY_DATABASE_URL": ""},
    ):
        results["champion only"] = load(port, one, 16, args.requests)
        move(port, "canary", {"version": 2, "percent": 20, "reason": "bench"})
        results["canary 20%"] = load(port, one, 16, args.requests)
        move(port, "rollback", {"reason": "bench"})
        move(port, "shadow", {"version": 2, "reason": "bench"})
        time.sleep(0.5)
        results["with a shadow"] = load(port, one, 16, args.requests)
        results["champion only (again)"] = None  # measured after removing the shadow
        move(port, "unshadow", {"version": 2, "reason": "bench"})
        results["champion only (again)"] = load(port, one, 16, args.requests)
    base = (results["champion only"]["rps"] + results["champion only (again)"]["rps"]) / 2
    print(f"shipway rollout benchmark — single rows, concurrency 16, {args.requests} requests")
    for name, r in results.items():
        print(f"  {name:24s} {fmt(r)}  ratio {r['rps'] / base:.2f}")


if __name__ == "__main__":
    main()

"""Guards and batching: what micro-batching buys, and what the guard chain costs, in one run.

    python bench/guards.py [--requests 4000] [--calls 3000]

(1) Micro-batching: ``shipway serve`` on the benchmark pilot (scikit-learn pipeline, 30
    numeric features), single-row requests at concurrency 64 over loopback HTTP, with
    ``serving.batching`` on (the default) and off (one model call per request), from the same
    workspace and store, one after the other. Prints throughput, p50/p99 and the ratio on/off.

(2) Guard chain overhead: in one process, the predict path answering single rows one at a
    time (concurrency 1), with the full guard chain (deadline, breaker, retry loop, output
    checks) and with the model call awaited bare, in alternating rounds. Prints each p50 and
    the difference. Nothing fails in either run: this is the cost on the happy path.

No figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import build_pilot, fmt, free_port, init_shipway, load, server


def batching(work: Path, manifest: Path, rows: list[dict[str, float]], requests: int) -> None:
    off = manifest.parent / "shipway-nobatch.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec.setdefault("serving", {})["batching"] = {"enabled": False}
    off.write_text(yaml.safe_dump(spec, sort_keys=False))
    one = work / "one.json"
    one.write_text(json.dumps({"inputs": rows[0]}))
    results: dict[str, Any] = {}
    runs = (("batching on", manifest), ("batching off", off), ("batching on ", manifest))
    for label, path in runs:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "shipway",
            "serve",
            str(path),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--dev",
        ]
        with server(cmd, f"http://127.0.0.1:{port}/readyz", env={"SHIPWAY_DATABASE_URL": ""}):
            results[label] = load(port, one, 64, requests)
    on_rps = (results["batching on"]["rps"] + results["batching on "]["rps"]) / 2
    print(f"(1) micro-batching: single rows, concurrency 64, {requests} requests per run")
    for label, r in results.items():
        print(f"    {label:14s} {fmt(r)}")
    print(f"    ratio throughput on/off: {on_rps / results['batching off']['rps']:.2f}")


def guard_overhead(manifest: Path, rows: list[dict[str, float]], calls: int) -> None:
    from shipway.service import Service
    from shipway.serving.router import Job
    from shipway.settings import Settings

    service = Service.open(manifest, Settings(database_url=None, dev_mode=True))
    service.start()
    path = service.predict_path
    chain = path.chain
    guarded = chain._guarded

    async def bare(lane: Any, rows_: Any, record: Any, reasons: list[str]) -> Any:
        res = await lane.submit(Job(rows_, record))
        if isinstance(res, Exception):
            raise res
        return res

    async def run(n: int) -> list[float]:
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            await path.run([rows[i % len(rows)]], True)
            lat.append(time.perf_counter() - t0)
        return lat

    async def main() -> dict[str, list[float]]:
        await run(300)  # warm up
        out: dict[str, list[float]] = {"guarded": [], "bare": []}
        rounds = 6
        for _ in range(rounds):
            chain._guarded = guarded  # type: ignore[method-assign]
            out["guarded"] += await run(calls // rounds)
            chain._guarded = bare  # type: ignore[method-assign]
            out["bare"] += await run(calls // rounds)
        chain._guarded = guarded  # type: ignore[method-assign]
        return out

    try:
        lat = asyncio.run(main())
    finally:
        service.stop()
    g = statistics.median(lat["guarded"]) * 1000
    b = statistics.median(lat["bare"]) * 1000
    print(f"(2) guard chain on the happy path: {calls} single-row calls each, in-process, c=1")
    print(f"    with guards      p50 {g:.3f} ms")
    print(f"    model call bare  p50 {b:.3f} ms")
    print(f"    added p50 {g - b:+.3f} ms (target under 0.2 ms); ratio {g / b:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--calls", type=int, default=3000)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipway-bench-guards-"))
    model, data, rows = build_pilot(work)
    manifest = init_shipway(work, model, data)
    batching(work, manifest, rows, a.requests)
    guard_overhead(manifest, rows, a.calls)


if __name__ == "__main__":
    main()

"""A lean HTTP/1.1 load generator for the benchmarks (run as its own process).

Each of C workers holds one keep-alive connection to 127.0.0.1 and sends pre-encoded request
bytes back to back, so the client costs little CPU beside the server under test. Bounded: a
fixed number of requests and a time cap.

    python bench/_loadgen.py --port 8000 --path /v1/predict --body body.json \
        --concurrency 16 --requests 4000 [--warmup 200] [--timeout 60]

Prints one JSON line: requests, seconds, rps, p50/p90/p99 ms, errors, client CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time


async def _worker(
    port: int, request: bytes, n: int, lat: list[float], errors: list[int], deadline: float
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                low = line.lower()
                if low.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    with open(args.body, "rb") as f:
        body = f.read()
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    deadline = time.monotonic() + args.timeout
    warm: list[float] = []
    warm_errors: list[int] = []
    await asyncio.gather(*(
        _worker(args.port, request, max(1, args.warmup // args.concurrency), warm, warm_errors,
                deadline)
        for _ in range(args.concurrency)
    ))  # fmt: skip
    lat: list[float] = []
    errors: list[int] = []
    per = max(1, args.requests // args.concurrency)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(
        _worker(args.port, request, per, lat, errors, deadline) for _ in range(args.concurrency)
    ))  # fmt: skip
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else float("nan")

    return {
        "requests": len(lat),
        "seconds": elapsed,
        "rps": len(lat) / elapsed if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "answered_total": len(lat) - len(errors) + len(warm) - len(warm_errors),
        "client_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/predict")
    p.add_argument("--body", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

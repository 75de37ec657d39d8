"""Decision ids: UUID version 7 (RFC 9562), time-ordered.

Ids that grow with time keep the decision log's unique index appending at its right edge
instead of scattering writes across it as random (version 4) ids do, and they sort by time.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

_VERSION = 0x7 << 76
_VERSION_MASK = ~(0xF << 76)
_VARIANT = 0x2 << 62
_VARIANT_MASK = ~(0x3 << 62)


def _fmt(v: int) -> str:
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Random bytes read from the OS at a time: one read serves hundreds of ids.
_POOL_BYTES = 4096
_pool = b""
_pool_at = 0
_pool_lock = threading.Lock()


def _random(k: int) -> bytes:
    """``k`` random bytes from the OS's generator, read ahead in blocks (ids are made on the
    request path, where a system call per request is a cost worth saving)."""
    global _pool, _pool_at
    with _pool_lock:
        if _pool_at + k > len(_pool):
            _pool, _pool_at = os.urandom(max(_POOL_BYTES, k)), 0
        out = _pool[_pool_at : _pool_at + k]
        _pool_at += k
    return out


def new_ids(n: int) -> list[str]:
    """``n`` fresh ids (one clock read and one slice of random bytes for all of them)."""
    ms = (time.time_ns() // 1_000_000) << 80
    raw = _random(10 * n)
    out = []
    for k in range(0, 10 * n, 10):
        v = ms | int.from_bytes(raw[k : k + 10], "big")
        out.append(_fmt((v & _VERSION_MASK & _VARIANT_MASK) | _VERSION | _VARIANT))
    return out


def new_id() -> str:
    return new_ids(1)[0]


def derived_ids(seed: str, at: float, start: int, n: int) -> list[str]:
    """Ids ``start .. start+n`` of a batch named by ``seed`` and claimed at ``at``: the same
    every time they are made, so a run that takes up a killed run's batch can tell the rows
    already logged (their ids exist) from the rest. Still version 7 ids of the claim's time."""
    ms = (int(at * 1000) & ((1 << 48) - 1)) << 80
    base = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=10).digest())
    mask = (1 << 80) - 1
    out = []
    for i in range(start, start + n):
        v = ms | ((base + i) & mask)  # distinct within the batch, apart across batches
        out.append(_fmt((v & _VERSION_MASK & _VARIANT_MASK) | _VERSION | _VARIANT))
    return out


__all__ = ["derived_ids", "new_id", "new_ids"]

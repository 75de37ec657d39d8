"""The audit log: every state change as an event in one hash chain per store.

Each event stores the sha256 of the previous event (``prev_hash``) and its own ``hash`` over
its canonical content (seq, time, service, actor, action, target, before, after, reason, and
``prev_hash``). ``audit_head`` holds the last seq and hash. Editing any event changes its hash;
deleting one leaves a gap in seq or a broken link; deleting the newest ones leaves the head
pointing past the end. :func:`verify` walks the chain and names the first broken link.

Appends take the chain's lock by updating the head row first, in the caller's transaction, so
concurrent appends from several processes (SQLite or PostgreSQL) serialise and a state change
and its audit event commit together or not at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, update

from shipway.store.tables import audit_events, audit_head

GENESIS = "0" * 64


def _canon(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def event_hash(e: dict[str, Any]) -> str:
    content = {
        "seq": int(e["seq"]),
        "ts": repr(float(e["ts"])),
        "service": e["service"],
        "actor": e["actor"],
        "action": e["action"],
        "target": e["target"],
        "before": e["before"],
        "after": e["after"],
        "reason": e["reason"],
        "prev_hash": e["prev_hash"],
    }
    return hashlib.sha256(_canon(content).encode()).hexdigest()


def append(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target: str,
    service: str | None = None,
    before: Any = None,
    after: Any = None,
    reason: str = "",
) -> dict[str, Any]:
    """Append one event in ``conn``'s transaction; returns the stored event."""
    # Take the chain's lock: the head row is written first (a row lock on PostgreSQL, the
    # database's write lock on SQLite), so no other append can read the same head meanwhile.
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq + 1))
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1))
    seq, prev = head.one()
    event = {
        "seq": int(seq),
        "ts": time.time(),
        "service": service,
        "actor": actor,
        "action": action,
        "target": target,
        "before": _canon(before),
        "after": _canon(after),
        "reason": reason or "",
        "prev_hash": prev,
    }
    event["hash"] = event_hash(event)
    conn.execute(insert(audit_events).values(**event))
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=event["hash"]))
    return event


def record(engine: Engine, **kwargs: Any) -> dict[str, Any]:
    """Append one event in a transaction of its own."""
    with engine.begin() as conn:
        return append(conn, **kwargs)


def head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        seq, h = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
    return int(seq), str(h)


def _decode(row: Any) -> dict[str, Any]:
    d = {str(k): v for k, v in row.items()}
    d["before"] = orjson.loads(d["before"]) if d["before"] else None
    d["after"] = orjson.loads(d["after"]) if d["after"] else None
    return d


def events(
    engine: Engine,
    *,
    service: str | None = None,
    since_seq: int = 0,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    q = select(audit_events).where(audit_events.c.seq > since_seq)
    if service is not None:
        q = q.where(audit_events.c.service == service)
    q = q.order_by(audit_events.c.seq.desc() if newest_first else audit_events.c.seq)
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        return [_decode(r) for r in conn.execute(q).mappings().all()]


def _raw_events(engine: Engine, chunk: int = 5000) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        q = select(audit_events).where(audit_events.c.seq > last).order_by(audit_events.c.seq)
        with engine.connect() as conn:
            rows = conn.execute(q.limit(chunk)).mappings().all()
        if not rows:
            return
        for r in rows:
            yield {str(k): v for k, v in r.items()}
        last = rows[-1]["seq"]


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    broken_seq: int | None = None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "broken_seq": self.broken_seq,
            "problem": self.problem,
        }


def verify(engine: Engine) -> Verification:
    """Walk the whole chain; the first event whose content, link or position is wrong."""
    prev = GENESIS
    expected = 1
    n = 0
    for e in _raw_events(engine):
        seq = int(e["seq"])
        if seq != expected:
            return Verification(False, n, expected, f"event {expected} is missing (next is {seq})")
        if e["prev_hash"] != prev:
            return Verification(False, n, seq, f"event {seq} does not link to event {seq - 1}")
        if event_hash(e) != e["hash"]:
            return Verification(
                False, n, seq, f"event {seq} was changed after it was written (hash mismatch)"
            )
        prev = e["hash"]
        expected += 1
        n += 1
    head_seq, head_hash = head(engine)
    if head_seq != expected - 1 or head_hash != prev:
        return Verification(
            False,
            n,
            expected,
            f"the chain ends at event {expected - 1} but its head says {head_seq}: "
            "events were removed from the end",
        )
    return Verification(True, n)


def checkpoint(engine: Engine, key: bytes) -> dict[str, Any]:
    """A signed statement of the chain's head, to keep off-site: HMAC-SHA256 over
    ``seq:hash:ts`` with the server secret. A later :func:`verify` plus a matching checkpoint
    shows nothing before it was rewritten wholesale."""
    seq, h = head(engine)
    ts = time.time()
    mac = hmac.new(key, f"{seq}:{h}:{ts!r}".encode(), hashlib.sha256).hexdigest()
    return {"seq": seq, "hash": h, "ts": ts, "hmac_sha256": mac}


def check_checkpoint(engine: Engine, key: bytes, cp: dict[str, Any]) -> Verification:
    """Whether the chain still holds what checkpoint ``cp`` saw.

    The signature must be the server secret's; the chain is then recomputed from its first
    event up to the checkpoint's, from the events' content (not their stored hashes), and must
    end at the hash the checkpoint holds; and the chain must still reach that far (deleting
    the newest events and moving the head back leaves a consistent but shorter chain).
    """
    try:
        seq, want, ts = int(cp["seq"]), str(cp["hash"]), float(cp["ts"])
    except (KeyError, TypeError, ValueError):
        return Verification(False, 0, None, "the checkpoint is not a checkpoint (seq, hash, ts)")
    mac = hmac.new(key, f"{seq}:{want}:{ts!r}".encode(), hashlib.sha256)
    if not hmac.compare_digest(mac.hexdigest(), str(cp.get("hmac_sha256", ""))):
        return Verification(
            False, 0, None, "the checkpoint's signature does not match (wrong secret, or edited)"
        )
    prev, expected, n = GENESIS, 1, 0
    if seq > 0:
        for e in _raw_events(engine):
            s = int(e["seq"])
            if s > seq:
                break
            if s != expected:
                return Verification(False, n, expected, f"event {expected} is missing")
            content = event_hash({**e, "prev_hash": prev})
            if e["prev_hash"] != prev or content != e["hash"]:
                return Verification(False, n, s, f"event {s} differs from what was checkpointed")
            prev, expected, n = content, expected + 1, n + 1
        if expected - 1 != seq:
            return Verification(
                False,
                n,
                expected,
                f"the checkpoint saw event {seq}, but the chain now ends at event "
                f"{expected - 1}: events were removed",
            )
    if prev != want:
        return Verification(False, n, seq, f"event {seq} differs from what was checkpointed")
    return Verification(True, n)


def write_checkpoint(engine: Engine, key: bytes, directory: Path, keep: int = 48) -> Path:
    """Write a checkpoint file into ``directory`` (atomically), keeping the newest ``keep``."""
    cp = checkpoint(engine, key)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{int(cp['ts'] * 1000):015d}-{cp['seq']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(cp))
    os.replace(tmp, path)
    for old in sorted(directory.glob("checkpoint-*.json"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def newest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint file in ``directory``, if any."""
    for path in sorted(directory.glob("checkpoint-*.json"), reverse=True):
        try:
            return path, orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
    return None


__all__ = [
    "GENESIS",
    "Verification",
    "append",
    "check_checkpoint",
    "checkpoint",
    "event_hash",
    "events",
    "head",
    "newest_checkpoint",
    "record",
    "verify",
    "write_checkpoint",
]

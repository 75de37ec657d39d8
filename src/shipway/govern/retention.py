"""Retention: remove decisions older than the manifest allows, and say so in the audit log."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, delete

from shipway.govern import audit
from shipway.manifest import RetentionSpec, parse_duration
from shipway.store.tables import decisions, shadow_decisions


def purge(
    engine: Engine, service: str, spec: RetentionSpec, *, actor: str, now: float | None = None
) -> dict[str, Any]:
    """Delete what is past retention, in one transaction with its audit event."""
    now = time.time() if now is None else now
    removed: dict[str, int] = {}
    cutoffs: dict[str, float] = {}
    with engine.begin() as conn:
        for name, table, age in (
            ("decisions", decisions, spec.decisions),
            ("shadow_decisions", shadow_decisions, spec.shadow_decisions),
        ):
            if age is None:
                continue
            cutoff = now - parse_duration(age)
            cutoffs[name] = cutoff
            res = conn.execute(
                delete(table).where(table.c.service == service, table.c.ts < cutoff)
            )
            removed[name] = int(res.rowcount or 0)
        if cutoffs:
            audit.append(
                conn, actor=actor, action="retention.purge", target=f"service:{service}",
                service=service, after={"removed": removed, "older_than": cutoffs},
                reason="retention policy",
            )  # fmt: skip
    return {"removed": removed, "older_than": cutoffs}


__all__ = ["purge"]

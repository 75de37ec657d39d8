"""Retention: remove decisions older than the manifest allows, and say so in the audit log."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine

from shipway.data import ledger
from shipway.decisions import queries
from shipway.govern import audit
from shipway.manifest import RetentionSpec


def purge(
    engine: Engine, service: str, spec: RetentionSpec, *, actor: str, now: float | None = None
) -> dict[str, Any]:
    """Delete what is past retention, in one transaction with its audit event."""
    now = time.time() if now is None else now
    cutoffs: dict[str, float] = {}
    if spec.decisions is not None:
        # refused requests are kept as long as the decisions they stand beside
        cutoffs["decisions"] = cutoffs["rejections"] = now - spec.decisions.seconds
    if spec.shadow_decisions is not None:
        cutoffs["shadow_decisions"] = now - spec.shadow_decisions.seconds
    with engine.begin() as conn:
        removed = queries.purge(
            conn,
            service,
            decisions_before=cutoffs.get("decisions"),
            shadows_before=cutoffs.get("shadow_decisions"),
        )
        if "decisions" in cutoffs:  # rows a source held are kept no longer than decisions
            removed["quarantine"] = ledger.purge(conn, service, cutoffs["decisions"])
            cutoffs["quarantine"] = cutoffs["decisions"]
        if cutoffs:
            audit.append(
                conn,
                actor=actor,
                action="retention.purge",
                target=f"service:{service}",
                service=service,
                after={"removed": removed, "older_than": cutoffs},
                reason="retention policy",
            )
    return {"removed": removed, "older_than": cutoffs}


__all__ = ["purge"]

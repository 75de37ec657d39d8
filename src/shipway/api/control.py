"""Control moves over HTTP: the same rollout moves as the CLI, applied to the stored plan."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shipway.errors import BadRequest, InputError
from shipway.service import Service


class RolloutMove(BaseModel):
    version: int | None = Field(None, description="Model version (shadow, unshadow, canary).")
    percent: float | None = Field(None, description="Canary share in percent (canary).")
    key: str | None = Field(
        None, description="Sticky key: an input field name, or header:NAME (canary)."
    )
    reason: str = Field("", description="Why; required with force.")
    force: bool = Field(False, description="Pass a failed gate or failed step checks.")


class KeyCreate(BaseModel):
    name: str = Field(..., min_length=1, max_length=128, description="Who or what uses the key.")
    role: str = Field(..., description="viewer, predictor, reviewer, operator, approver, admin.")
    expires: str | None = Field(None, description="Lifetime such as 90d (unset: no expiry).")
    reason: str = Field("", description="Why (recorded in the audit log).")


class ReviewOutcome(BaseModel):
    action: str = Field(..., description="approve, override or escalate.")
    output: Any = Field(None, description="The new output (override); checked against the spec.")
    reason: str = Field("", description="Why (kept with the outcome and in the audit log).")


class Reason(BaseModel):
    reason: str = Field("", description="Why (recorded in the audit log).")


MOVES = ("shadow", "unshadow", "canary", "step", "promote", "rollback")


def apply_move(service: Service, move: str, body: RolloutMove, actor: str) -> dict[str, Any]:
    r = service.rollout
    if move not in MOVES:
        raise BadRequest(f"unknown rollout move {move!r}; one of {', '.join(MOVES)}")
    if move in ("shadow", "unshadow", "canary") and body.version is None:
        raise InputError(f"'{move}' needs a version")
    report = None
    if move == "shadow":
        st = r.shadow(body.version or 0, actor=actor, reason=body.reason)
    elif move == "unshadow":
        st = r.unshadow(body.version or 0, actor=actor, reason=body.reason)
    elif move == "canary":
        st = r.canary(
            body.version or 0,
            percent=body.percent,
            key=body.key,
            actor=actor,
            reason=body.reason,
            force=body.force,
        )
    elif move == "step":
        st, rep = r.step(actor=actor, reason=body.reason, force=body.force)
        report = rep.to_dict()
    elif move == "promote":
        st = r.promote(actor=actor, reason=body.reason, force=body.force)
    else:
        st = r.rollback(actor=actor, reason=body.reason)
    service.refresh()  # this replica applies it now; others within a poll interval
    out: dict[str, Any] = {"move": move, "state": st.to_dict()}
    if report is not None:
        out["checks"] = report
    return out


def rollout_report(service: Service) -> dict[str, Any]:
    r = service.rollout
    st = r.state()
    out: dict[str, Any] = {"state": st.to_dict()}
    if st.canary is not None:
        out["canary"] = r.canary_report(st).to_dict()
    out["shadows"] = [r.agreement(v) for v in st.shadows]
    return out


__all__ = [
    "MOVES",
    "KeyCreate",
    "Reason",
    "ReviewOutcome",
    "RolloutMove",
    "apply_move",
    "rollout_report",
]

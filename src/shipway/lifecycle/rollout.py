"""Rollout: which versions take traffic, and the moves between plans.

The plan lives in the store (table ``rollout_state``, one row per service), so the CLI, the
HTTP control API and every replica see the same one; servers poll its ``generation`` and
swap their router within a second. Every move is recorded in ``rollout_events`` with who,
when, why and the plan before and after.

Moves: ``shadow`` / ``unshadow`` a version; ``canary`` a version at a share (sticky by a key);
``step`` through the manifest's canary steps once each step's checks pass; ``promote`` the
canary to champion; ``rollback`` to the previous champion at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import insert, select, update

from shipway.decisions import queries
from shipway.errors import Conflict, GateFailed, InputError, NotFound
from shipway.govern import audit
from shipway.govern.roles import system_actor
from shipway.manifest import Manifest
from shipway.models import ModelVersion, Registry
from shipway.store import Store
from shipway.store.tables import rollout_events, rollout_state


@dataclass(frozen=True)
class RolloutState:
    service: str
    champion: int
    previous_champion: int | None = None
    canary: int | None = None
    canary_percent: float = 0.0
    canary_key: str | None = None
    canary_step: int | None = None
    canary_since: float | None = None
    shadows: tuple[int, ...] = ()
    generation: int = 0
    updated_at: float = 0.0
    updated_by: str = "manifest"
    stopped: bool = False
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shadows"] = list(self.shadows)
        return d


def _summary(st: RolloutState) -> dict[str, Any]:
    return {
        "champion": st.champion,
        "canary": st.canary,
        "percent": st.canary_percent,
        "shadows": list(st.shadows),
        "stopped": st.stopped,
    }


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class CanaryReport:
    version: int | None
    percent: float
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    p99_ms: float | None = None
    agreement: float | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ready"] = self.ready
        return d


def _gate_passed(mv: ModelVersion) -> tuple[bool, list[str]]:
    g = mv.metrics.get("gate")
    if not g:
        return True, []
    return bool(g.get("passed")), list(g.get("reasons", []))


class Rollout:
    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        registry: Registry | None = None,
        blocking_alerts: Callable[[], list[str]] | None = None,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.service = manifest.service.name
        self.spec = manifest.rollout
        self.registry = registry or Registry(store)
        self.blocking_alerts = blocking_alerts
        """Alert rules firing now whose actions would stop a canary (handed in by the
        composition, so rollout does not read the monitor's tables)."""

    def _check_alerts(self, move: str, force: bool, reason: str) -> bool:
        """Refuse ``move`` while an alert that pauses canaries or rolls back is firing (an
        approver may force it, with a reason). True when forced past one."""
        firing = self.blocking_alerts() if self.blocking_alerts is not None else []
        if not firing:
            return False
        if not force:
            raise Conflict(
                f"cannot {move} while alert {', '.join(firing)} is firing (it pauses canaries "
                "or rolls back); resolve it, or --force with a reason"
            )
        if not reason.strip():
            raise InputError("--force needs a reason (--reason)")
        return True

    # -- reading -----------------------------------------------------------------------------

    def generation(self) -> int:
        """The plan's generation: one cheap query, polled by servers."""
        with self.store.engine.connect() as conn:
            g = conn.execute(
                select(rollout_state.c.generation).where(rollout_state.c.service == self.service)
            ).scalar()
        return int(g or 0)

    def state(self) -> RolloutState:
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(select(rollout_state).where(rollout_state.c.service == self.service))
                .mappings()
                .first()
            )
        if row is None:
            return RolloutState(service=self.service, champion=self.manifest.model.version)
        d = {str(k): v for k, v in row.items()}
        d["shadows"] = tuple(d["shadows"] or ())
        return RolloutState(**d)

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(rollout_events)
                    .where(rollout_events.c.service == self.service)
                    .order_by(rollout_events.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [{str(k): v for k, v in r.items()} for r in reversed(rows)]

    def agreement(self, version: int, limit: int = 50_000) -> dict[str, Any]:
        """How often a shadow version agreed with the answer the caller got."""
        rows = queries.shadow_pairs(self.store.engine, self.service, version, limit)
        answered = [(p.served, p.shadow) for p in rows if p.error is None and p.shadow is not None]
        out: dict[str, Any] = {
            "version": version,
            "shadowed": len(rows),
            "failed": len(rows) - len(answered),
            "compared": len(answered),
        }
        if not answered:
            out["agreement"] = None
            return out
        if self.manifest.output.kind == "classification":
            out["agreement"] = sum(a == b for a, b in answered) / len(answered)
        else:
            diffs = [abs(float(a) - float(b)) for a, b in answered]
            out["agreement"] = None
            out["mean_abs_diff"] = float(np.mean(diffs))
        return out

    def canary_report(self, state: RolloutState | None = None) -> CanaryReport:
        state = state or self.state()
        rep = CanaryReport(version=state.canary, percent=state.canary_percent)
        if state.canary is None:
            rep.checks.append(Check("canary", False, "no canary is running"))
            return rep
        figures = queries.canary_figures(
            self.store.engine, self.service, state.canary, state.canary_since or 0.0
        )
        rep.requests = figures.requests
        rep.errors = figures.errors
        lat = figures.latencies_ms
        if rep.requests:
            rep.error_rate = rep.errors / rep.requests
        if lat:
            rep.p99_ms = float(np.percentile(np.asarray(lat, dtype=float), 99))
        spec = self.spec
        rep.checks.append(
            Check(
                "min_requests",
                rep.requests >= spec.min_requests,
                f"{rep.requests} canary decisions at this step, need {spec.min_requests}",
            )
        )
        er = rep.error_rate or 0.0
        rep.checks.append(
            Check(
                "max_error_rate",
                er <= spec.max_error_rate,
                f"error rate {er:.4f}, allowed {spec.max_error_rate}",
            )
        )
        if spec.max_p99_ms is not None:
            p99 = rep.p99_ms
            rep.checks.append(
                Check(
                    "max_p99_ms",
                    p99 is not None and p99 <= spec.max_p99_ms,
                    f"p99 {p99 if p99 is None else round(p99, 2)} ms, allowed {spec.max_p99_ms}",
                )
            )
        if spec.min_agreement is not None:
            ag = self.agreement(state.canary)["agreement"]
            rep.agreement = ag
            rep.checks.append(
                Check(
                    "min_agreement",
                    ag is not None and ag >= spec.min_agreement,
                    "no shadow comparisons for this version: shadow it first"
                    if ag is None
                    else f"agreement {ag:.4f} with the champion, need {spec.min_agreement}",
                )
            )
        return rep

    # -- moves -------------------------------------------------------------------------------

    def _version(self, version: int) -> ModelVersion:
        try:
            return self.registry.get(self.service, version)
        except NotFound:
            raise NotFound(
                f"service {self.service!r} has no model version {version}; "
                "see 'shipway models list'"
            ) from None

    def _check_gate(self, mv: ModelVersion, move: str, force: bool, reason: str) -> bool:
        passed, reasons = _gate_passed(mv)
        if passed:
            return False
        if not force:
            raise GateFailed(
                f"version {mv.version} failed its evaluation gate ({'; '.join(reasons)}); "
                f"it cannot {move} without --force and a reason"
            )
        if not reason.strip():
            raise InputError("--force needs a reason (--reason)")
        return True

    def _commit(
        self, before: RolloutState, after: RolloutState, action: str, actor: str, reason: str
    ) -> RolloutState:
        now = time.time()
        after = replace(after, generation=before.generation + 1, updated_at=now, updated_by=actor)
        values = after.to_dict()
        del values["service"]
        with self.store.engine.begin() as conn:
            if before.generation == 0:
                exists = conn.execute(
                    select(rollout_state.c.generation).where(
                        rollout_state.c.service == self.service
                    )
                ).first()
                if exists is not None:
                    raise Conflict("the rollout plan changed meanwhile; look again and retry")
                conn.execute(insert(rollout_state).values(service=self.service, **values))
            else:
                res = conn.execute(
                    update(rollout_state)
                    .where(
                        rollout_state.c.service == self.service,
                        rollout_state.c.generation == before.generation,
                    )
                    .values(**values)
                )
                if res.rowcount != 1:
                    raise Conflict("the rollout plan changed meanwhile; look again and retry")
            conn.execute(
                insert(rollout_events).values(
                    service=self.service,
                    ts=now,
                    actor=actor,
                    action=action,
                    reason=reason,
                    before=before.to_dict(),
                    after=after.to_dict(),
                )
            )
            audit.append(
                conn,
                actor=actor,
                action=f"rollout.{action}",
                target=f"service:{self.service}",
                service=self.service,
                before=_summary(before),
                after=_summary(after),
                reason=reason,
            )
            if action.startswith("force-"):
                audit.append(
                    conn,
                    actor=actor,
                    action="gate.force",
                    target=f"service:{self.service}",
                    service=self.service,
                    after={"move": action.removeprefix("force-")},
                    reason=reason,
                )
        return after

    def stop(self, *, actor: str, reason: str) -> RolloutState:
        """The stop switch: servers stop calling models and answer as the manifest declares."""
        if not reason.strip():
            raise InputError("stopping a service needs a reason (--reason)")
        st = self.state()
        if st.stopped:
            raise Conflict(f"service {self.service!r} is already stopped: {st.stop_reason}")
        return self._commit(
            st, replace(st, stopped=True, stop_reason=reason), "stop", actor, reason
        )

    def resume(self, *, actor: str, reason: str = "") -> RolloutState:
        st = self.state()
        if not st.stopped:
            raise Conflict(f"service {self.service!r} is not stopped")
        return self._commit(
            st, replace(st, stopped=False, stop_reason=None), "resume", actor, reason
        )

    def shadow(self, version: int, *, actor: str, reason: str = "") -> RolloutState:
        st = self.state()
        self._version(version)
        if version == st.champion:
            raise Conflict(f"version {version} is the champion; it cannot also shadow it")
        if version in st.shadows:
            raise Conflict(f"version {version} is already a shadow")
        after = replace(st, shadows=(*st.shadows, version))
        return self._commit(st, after, "shadow", actor, reason)

    def unshadow(self, version: int, *, actor: str, reason: str = "") -> RolloutState:
        st = self.state()
        if version not in st.shadows:
            raise Conflict(f"version {version} is not a shadow")
        after = replace(st, shadows=tuple(v for v in st.shadows if v != version))
        return self._commit(st, after, "unshadow", actor, reason)

    def canary(
        self,
        version: int,
        *,
        percent: float | None = None,
        key: str | None = None,
        actor: str,
        reason: str = "",
        force: bool = False,
    ) -> RolloutState:
        st = self.state()
        mv = self._version(version)
        if version == st.champion:
            raise Conflict(f"version {version} is already the champion")
        forced = self._check_gate(mv, "take canary traffic", force, reason)
        forced = self._check_alerts("start a canary", force, reason) or forced
        pct = self.spec.steps[0] if percent is None else percent
        if not 0 < pct <= 100:
            raise InputError(f"--percent must be in (0, 100], not {pct}")
        step = self.spec.steps.index(pct) if pct in self.spec.steps else None
        after = replace(
            st,
            canary=version,
            canary_percent=float(pct),
            canary_key=key or None,
            canary_step=step,
            canary_since=time.time(),
        )
        return self._commit(st, after, "force-canary" if forced else "canary", actor, reason)

    def step(
        self, *, actor: str, reason: str = "", force: bool = False
    ) -> tuple[RolloutState, CanaryReport]:
        st = self.state()
        if st.canary is None:
            raise Conflict("no canary is running: start one with 'shipway rollout canary'")
        report = self.canary_report(st)
        if not report.ready and not force:
            failed = "; ".join(c.detail for c in report.checks if not c.passed)
            raise Conflict(f"the canary is not ready for the next step: {failed}")
        if force and not report.ready and not reason.strip():
            raise InputError("--force needs a reason (--reason)")
        steps = self.spec.steps
        nxt = next((s for s in steps if s > st.canary_percent), None)
        if nxt is None:
            raise Conflict(
                f"the canary already takes {st.canary_percent:g}%: "
                "promote it with 'shipway rollout promote'"
            )
        after = replace(
            st, canary_percent=nxt, canary_step=steps.index(nxt), canary_since=time.time()
        )
        action = "step" if report.ready else "force-step"
        return self._commit(st, after, action, actor, reason), report

    def promote(self, *, actor: str, reason: str = "", force: bool = False) -> RolloutState:
        st = self.state()
        if st.canary is None:
            raise Conflict("no canary to promote: start one with 'shipway rollout canary'")
        mv = self._version(st.canary)
        forced = self._check_gate(mv, "become champion", force, reason)
        forced = self._check_alerts("promote", force, reason) or forced
        report = self.canary_report(st)
        if not report.ready:
            if not force:
                failed = "; ".join(c.detail for c in report.checks if not c.passed)
                raise Conflict(
                    f"the canary has not passed its step checks ({failed}); promote needs them, "
                    "or --force with a reason from an approver"
                )
            if not reason.strip():
                raise InputError("--force needs a reason (--reason)")
            forced = True
        after = replace(
            st,
            champion=st.canary,
            previous_champion=st.champion,
            canary=None,
            canary_percent=0.0,
            canary_key=None,
            canary_step=None,
            canary_since=None,
            shadows=tuple(v for v in st.shadows if v != st.canary),
        )
        return self._commit(st, after, "force-promote" if forced else "promote", actor, reason)

    def rollback(self, *, actor: str, reason: str = "") -> RolloutState:
        """Canary running: stop it. Otherwise: the previous champion answers again."""
        st = self.state()
        if st.canary is not None:
            after = replace(
                st,
                canary=None,
                canary_percent=0.0,
                canary_key=None,
                canary_step=None,
                canary_since=None,
            )
            return self._commit(st, after, "rollback-canary", actor, reason)
        if st.previous_champion is None:
            raise Conflict("there is no previous champion to roll back to")
        after = replace(st, champion=st.previous_champion, previous_champion=st.champion)
        return self._commit(st, after, "rollback", actor, reason)


#: A canary share at or above this is all traffic: a promotion in all but name.
FULL_SHARE = 100.0


def approval_needed(
    rollout: Rollout, move: str, *, percent: float | None = None, force: bool = False
) -> str | None:
    """Why ``move`` needs the ``approve`` permission, or None when ``operate`` is enough.

    Promotion and any forced move need approval, and so does any move that would send every
    request to a version no approver has promoted: a canary at 100% (or above the largest
    step the manifest declares) or a step to it.
    """
    if move == "promote":
        return "promotion"
    if force:
        return "--force"
    largest = max(rollout.spec.steps)
    if move == "canary" and percent is not None and (percent >= FULL_SHARE or percent > largest):
        return f"a canary share of {percent:g}% (all traffic, a promotion in all but name)"
    if move == "step":
        st = rollout.state()
        nxt = next((s for s in rollout.spec.steps if s > st.canary_percent), None)
        if st.canary is not None and nxt is not None and nxt >= FULL_SHARE:
            return f"a step to {nxt:g}% (all traffic, a promotion in all but name)"
    return None


def alert_actions(
    rollout: Rollout, after: Callable[[], Any] | None = None
) -> dict[str, Callable[[str], str]]:
    """The rollout moves an alert rule may take: ``rollback`` and ``pause_canary``.

    ``after`` runs after a move (a server applies its new plan at once with it).
    """

    def rollback(reason: str) -> str:
        st = rollout.rollback(actor=system_actor("monitor"), reason=reason)
        if after is not None:
            after()
        return f"rolled back: champion v{st.champion}, canary {st.canary}"

    def pause_canary(reason: str) -> str:
        if rollout.state().canary is None:
            return "no canary running"
        return rollback(reason)

    return {"rollback": rollback, "pause_canary": pause_canary}


__all__ = [
    "FULL_SHARE",
    "CanaryReport",
    "Check",
    "Rollout",
    "RolloutState",
    "alert_actions",
    "approval_needed",
]

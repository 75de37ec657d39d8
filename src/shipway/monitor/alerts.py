"""Alert rules: evaluated each window, fired after ``for`` consecutive windows, resolved when
the condition clears, each transition exactly once (the state is stored), and acted on.

Actions: ``notify`` (a JSON message to every webhook, queued in the notification outbox in the
same transaction as the firing, and delivered by the outbox worker with retries), ``rollback``
and ``pause_canary`` (through the rollout machinery the service hands in), ``review`` (a batch
of recent decisions queued for people), and ``retrain`` (a retrain job started in the
background, when the manifest has a training section). Firings, resolutions and what each
action did are stored in ``alert_events`` and shown by ``shipway alerts list``, with each
notification's delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, desc, insert, select, update

from shipway.expr import Expression
from shipway.manifest import MonitorSpec
from shipway.notify import Outbox, host_of
from shipway.notify.outbox import enqueue_all
from shipway.store.tables import alert_events, alert_state

log = logging.getLogger("shipway.alerts")


class AlertBook:
    def __init__(
        self,
        engine: Engine,
        service: str,
        spec: MonitorSpec,
        actions: dict[str, Callable[[str], str]],
    ) -> None:
        self.engine = engine
        self.service = service
        self.spec = spec
        self.rules = [(r, Expression(r.when)) for r in spec.alerts]
        self.actions = actions

    def _state(self, rule: str) -> tuple[int, bool, float | None, float | None] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    alert_state.c.consecutive,
                    alert_state.c.firing,
                    alert_state.c.since,
                    alert_state.c.window_end,
                ).where(alert_state.c.service == self.service, alert_state.c.rule == rule)
            ).first()
        return None if row is None else (int(row[0]), bool(row[1]), row[2], row[3])

    def _save(
        self,
        conn: Connection,
        rule: str,
        consecutive: int,
        firing: bool,
        since: float | None,
        new: bool,
        window_end: float | None,
    ) -> None:
        values = {
            "consecutive": consecutive,
            "firing": firing,
            "since": since,
            "window_end": window_end,
        }
        if new:
            conn.execute(insert(alert_state).values(service=self.service, rule=rule, **values))
        else:
            conn.execute(
                update(alert_state)
                .where(alert_state.c.service == self.service, alert_state.c.rule == rule)
                .values(**values)
            )

    def _record(self, conn: Connection, rule: str, status: str, detail: dict[str, Any]) -> None:
        conn.execute(
            insert(alert_events).values(
                service=self.service,
                rule=rule,
                status=status,
                ts=time.time(),
                detail=orjson.dumps(detail, option=orjson.OPT_NON_STR_KEYS).decode(),
            )
        )

    def _notify(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        ids = enqueue_all(conn, self.service, "alert", self.spec.webhooks, payload)
        return {"action": "notify", "queued": ids}

    def firing(self, actions: tuple[str, ...]) -> list[str]:
        """Rules firing now whose actions include any of ``actions``."""
        wanted = {r.name for r in self.spec.alerts if set(r.do) & set(actions)}
        if not wanted:
            return []
        with self.engine.connect() as conn:
            names = conn.execute(
                select(alert_state.c.rule).where(
                    alert_state.c.service == self.service, alert_state.c.firing.is_(True)
                )
            ).scalars()
            return sorted(n for n in names if n in wanted)

    def _payload(
        self, rule: Any, status: str, ctx: dict[str, Any], result: dict[str, Any]
    ) -> dict[str, Any]:
        figures = {k: v for k, v in ctx.items() if k != "drift"}
        return {
            "service": self.service,
            "rule": rule.name,
            "status": status,
            "when": rule.when,
            "window_start": result.get("window_start"),
            "window_end": result.get("window_end"),
            "figures": figures,
            "ts": time.time(),
        }

    def evaluate(self, ctx: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
        """Advance every rule by one window; returns the transitions (fired or resolved).

        A window counts towards a rule's ``for`` only when it does not overlap the last window
        that counted (it starts at or after that one's end), so running the monitor again over
        the same decisions a few seconds later does not fire a ``for: 2`` rule. Rules that
        hold but have not fired yet are listed in ``result["alerts_pending"]``.
        """
        out = []
        pending = []
        start, end = result.get("window_start"), result.get("window_end")
        for rule, expr in self.rules:
            holds = expr.test(ctx)
            st = self._state(rule.name)
            consecutive, firing, since, last_end = st if st is not None else (0, False, None, None)
            fresh = last_end is None or start is None or start >= last_end
            if not holds:
                consecutive, last_end = 0, None
            elif fresh:
                consecutive, last_end = consecutive + 1, end
            if holds and not firing and consecutive >= rule.for_:
                payload = self._payload(rule, "firing", ctx, result)
                done = self._act(rule)
                with self.engine.begin() as conn:
                    if "notify" in rule.do:
                        done.insert(rule.do.index("notify"), self._notify(conn, payload))
                    self._save(
                        conn, rule.name, consecutive, True, time.time(), st is None, last_end
                    )
                    self._record(conn, rule.name, "firing", {**payload, "actions": done})
                log.warning("alert %s firing: %s", rule.name, rule.when)
                out.append({"rule": rule.name, "status": "firing", "actions": done})
            elif not holds and firing:
                payload = self._payload(rule, "resolved", ctx, result)
                with self.engine.begin() as conn:
                    done = [self._notify(conn, payload)] if "notify" in rule.do else []
                    self._save(conn, rule.name, 0, False, None, st is None, None)
                    self._record(conn, rule.name, "resolved", {**payload, "actions": done})
                log.warning("alert %s resolved", rule.name)
                out.append({"rule": rule.name, "status": "resolved", "actions": done})
            else:
                if holds and not firing:
                    pending.append(
                        {
                            "rule": rule.name,
                            "windows": consecutive,
                            "for": rule.for_,
                            "counted": fresh,
                        }
                    )
                with self.engine.begin() as conn:
                    self._save(conn, rule.name, consecutive, firing, since, st is None, last_end)
        result["alerts_pending"] = pending
        return out

    def raise_in(self, conn: Connection, rule: str, detail: dict[str, Any]) -> None:
        """A one-off alert raised by another part (a review SLA breach), recorded and notified in
        the caller's transaction."""
        payload = {
            "service": self.service,
            "rule": rule,
            "status": "firing",
            "ts": time.time(),
            **detail,
        }
        self._record(conn, rule, "firing", {**payload, "actions": [self._notify(conn, payload)]})
        log.warning("alert %s: %s", rule, detail.get("summary", ""))

    def _act(self, rule: Any) -> list[dict[str, Any]]:
        """Every action but notify (which is queued with the firing's own transaction)."""
        done = []
        for action in rule.do:
            if action == "notify":
                continue
            fn = self.actions.get(action)
            if fn is None:
                done.append({"action": action, "result": "requested (not available yet)"})
                continue
            try:
                done.append({"action": action, "result": fn(f"alert {rule.name}: {rule.when}")})
            except Exception as exc:  # an action that cannot run is recorded, not raised
                done.append({"action": action, "result": f"failed: {exc}"})
        return done

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """Firings and resolutions, newest first; notify actions show each delivery (the
        target's host, status and attempts)."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(alert_events)
                    .where(alert_events.c.service == self.service)
                    .order_by(desc(alert_events.c.id))
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        events = [
            {
                **{str(k): v for k, v in r.items() if k != "detail"},
                "detail": orjson.loads(r["detail"]),
            }
            for r in rows
        ]
        ids = [
            i
            for e in events
            for a in e["detail"].get("actions", [])
            if a.get("action") == "notify"
            for i in a.get("queued", [])
        ]
        if ids:
            msgs = {
                m["id"]: m
                for m in Outbox(self.engine, self.service).messages(limit=len(ids), ids=ids)
            }
            for e in events:
                for a in e["detail"].get("actions", []):
                    if a.get("action") == "notify" and "queued" in a:
                        a["deliveries"] = [_delivery(msgs[i]) for i in a["queued"] if i in msgs]
        return events


def _delivery(msg: dict[str, Any]) -> dict[str, Any]:
    return {
        "message": msg["id"],
        "to": host_of(msg["url"]),
        "status": msg["status"],
        "delivered": msg["status"] == "delivered",
        "attempts": msg["attempts"],
        "last_error": msg["last_error"],
    }


__all__ = ["AlertBook"]

"""Alert rules: evaluated each window, fired after ``for`` consecutive windows, resolved when
the condition clears, each transition exactly once (the state is stored), and acted on.

Actions: ``notify`` (a JSON POST to every webhook, retried with exponential backoff, every
attempt recorded, and a log line), ``rollback`` and ``pause_canary`` (through the rollout
machinery the service hands in), ``review`` (a batch of recent decisions queued for people),
and ``retrain`` (recorded as requested until retraining exists). Firings, resolutions and
what each action did are stored in ``alert_events`` and shown by ``shipway alerts list``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, desc, insert, select, update

from shipway.expr import Expression
from shipway.manifest import MonitorSpec, WebhookSpec
from shipway.store.tables import alert_events, alert_state

log = logging.getLogger("shipway.alerts")


def deliver(hook: WebhookSpec, payload: dict[str, Any]) -> dict[str, Any]:
    """POST ``payload``; retry connection errors, 429 and 5xx with jittered backoff."""
    headers = {"content-type": "application/json"}
    for k, v in hook.headers.items():
        headers[k] = os.environ.get(v[4:], "") if v.startswith("env:") else v
    attempts: list[str] = []
    body = orjson.dumps(payload)
    for i in range(hook.attempts):
        try:
            r = httpx.post(hook.url, content=body, headers=headers, timeout=hook.timeout_s)
            attempts.append(f"HTTP {r.status_code}")
            if r.status_code < 400:
                return {"url": hook.url, "delivered": True, "attempts": attempts}
            if r.status_code != 429 and r.status_code < 500:
                break
        except httpx.HTTPError as exc:
            attempts.append(f"{type(exc).__name__}")
        if i < hook.attempts - 1:
            time.sleep(random.uniform(0, min(8.0, 0.25 * 2**i)))
    return {"url": hook.url, "delivered": False, "attempts": attempts}


class AlertBook:
    def __init__(
        self,
        engine: Engine,
        service: str,
        spec: MonitorSpec,
        actions: dict[str, Callable[[str], str]],
        notify: Callable[[WebhookSpec, dict[str, Any]], dict[str, Any]] = deliver,
    ) -> None:
        self.engine = engine
        self.service = service
        self.spec = spec
        self.rules = [(r, Expression(r.when)) for r in spec.alerts]
        self.actions = actions
        self.notify = notify

    def _state(self, rule: str) -> tuple[int, bool, float | None] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(alert_state.c.consecutive, alert_state.c.firing, alert_state.c.since)
                .where(alert_state.c.service == self.service, alert_state.c.rule == rule)
            ).first()  # fmt: skip
        return None if row is None else (int(row[0]), bool(row[1]), row[2])

    def _save(self, rule: str, consecutive: int, firing: bool, since: float | None, new: bool
              ) -> None:  # fmt: skip
        with self.engine.begin() as conn:
            values = {"consecutive": consecutive, "firing": firing, "since": since}
            if new:
                conn.execute(insert(alert_state).values(service=self.service, rule=rule, **values))
            else:
                conn.execute(update(alert_state).where(
                    alert_state.c.service == self.service, alert_state.c.rule == rule
                ).values(**values))  # fmt: skip

    def _record(self, rule: str, status: str, detail: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(alert_events).values(
                service=self.service, rule=rule, status=status, ts=time.time(),
                detail=orjson.dumps(detail, option=orjson.OPT_NON_STR_KEYS).decode(),
            ))  # fmt: skip

    def _payload(self, rule: Any, status: str, ctx: dict[str, Any], result: dict[str, Any]
                 ) -> dict[str, Any]:  # fmt: skip
        figures = {k: v for k, v in ctx.items() if k != "drift"}
        return {"service": self.service, "rule": rule.name, "status": status, "when": rule.when,
                "window_start": result.get("window_start"), "window_end": result.get("window_end"),
                "figures": figures, "ts": time.time()}  # fmt: skip

    def evaluate(self, ctx: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
        """Advance every rule by one window; returns the transitions (fired or resolved)."""
        out = []
        for rule, expr in self.rules:
            holds = expr.test(ctx)
            st = self._state(rule.name)
            consecutive, firing, since = st if st is not None else (0, False, None)
            consecutive = consecutive + 1 if holds else 0
            if holds and not firing and consecutive >= rule.for_:
                payload = self._payload(rule, "firing", ctx, result)
                done = self._act(rule, payload)
                self._save(rule.name, consecutive, True, time.time(), st is None)
                self._record(rule.name, "firing", {**payload, "actions": done})
                log.warning("alert %s firing: %s", rule.name, rule.when)
                out.append({"rule": rule.name, "status": "firing", "actions": done})
            elif not holds and firing:
                payload = self._payload(rule, "resolved", ctx, result)
                done = []
                if "notify" in rule.do:
                    done = [{"action": "notify", "deliveries": [self.notify(h, payload)
                                                                for h in self.spec.webhooks]}]
                self._save(rule.name, 0, False, None, st is None)
                self._record(rule.name, "resolved", {**payload, "actions": done})
                log.warning("alert %s resolved", rule.name)
                out.append({"rule": rule.name, "status": "resolved", "actions": done})
            else:
                self._save(rule.name, consecutive, firing, since, st is None)
        return out

    def raise_event(self, rule: str, detail: dict[str, Any]) -> None:
        """A one-off alert raised by another part (a review SLA breach): recorded, notified."""
        payload = {"service": self.service, "rule": rule, "status": "firing", "ts": time.time(),
                   **detail}  # fmt: skip
        deliveries = [self.notify(h, payload) for h in self.spec.webhooks]
        self._record(rule, "firing", {**payload, "actions": [
            {"action": "notify", "deliveries": deliveries}]})  # fmt: skip
        log.warning("alert %s: %s", rule, detail.get("summary", ""))

    def _act(self, rule: Any, payload: dict[str, Any]) -> list[dict[str, Any]]:
        done = []
        for action in rule.do:
            if action == "notify":
                deliveries = [self.notify(h, payload) for h in self.spec.webhooks]
                done.append({"action": "notify", "deliveries": deliveries})
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
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(alert_events).where(alert_events.c.service == self.service)
                .order_by(desc(alert_events.c.id)).limit(limit)
            ).mappings().all()  # fmt: skip
        return [{**{str(k): v for k, v in r.items() if k != "detail"},
                 "detail": orjson.loads(r["detail"])} for r in rows]  # fmt: skip


__all__ = ["AlertBook", "deliver"]

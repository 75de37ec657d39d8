"""Human review: policies that pick decisions, the queue people work, outcomes that teach.

Policies use the same expression language as alert rules (``shipway.expr``), evaluated on
every answered decision (``confidence``, ``output``, ``route``, ``model_version``,
``inputs.FIELD``), plus random sampling for quality control. A matching decision becomes a
review item in its policy's queue, committed before the caller hears the answer.

The queue hands out the oldest item of the highest priority with one conditional UPDATE, so
no two reviewers ever hold the same item (the database decides); a claim expires after
``claim_ttl`` and the item goes back. An outcome (approve, override with a new output checked
against the output spec, or escalate) is stored per reviewer; when the item has the reviews
its policy asks for, its final answer is set and becomes a label for the decision; the outcome,
its audit event, the label and (for a held decision) the notification of its answer commit in
one transaction. Items past their queue's SLA are escalated once, with an alert.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from shipway.decisions import labels, queries
from shipway.errors import Conflict, InputError, NotFound
from shipway.expr import Expression
from shipway.govern import audit
from shipway.govern.roles import system_actor
from shipway.manifest import OutputSpec, ReviewPolicy, ReviewSpec, WebhookSpec
from shipway.notify import enqueue
from shipway.store.tables import review_items, review_outcomes
from shipway.store.writer import GroupCommitWriter

ACTIONS = ("approve", "override", "escalate")


#: The policy of decisions held while the stop switch says ``review``.
STOP_POLICY = ReviewPolicy(name="stopped", sample=1.0, mode="hold", priority=50, queue="stopped")
#: The policy of decisions an alert's ``review`` action queues.
ALERT_POLICY = ReviewPolicy(name="alert", sample=1.0, priority=10, queue="alerts")


def sla_seconds(spec: ReviewSpec, queue: str) -> float:
    q = spec.queues.get(queue)
    return q.sla.seconds if q else 86400.0


def new_item(
    decision_id: str, service: str, policy: ReviewPolicy, due_at: float, now: float
) -> dict[str, Any]:
    """A pending review item for one decision (every item is made here)."""
    return {
        "id": str(uuid.uuid4()),
        "decision_id": decision_id,
        "service": service,
        "policy": policy.name,
        "queue": policy.queue,
        "mode": policy.mode,
        "priority": policy.priority,
        "required": policy.reviews,
        "status": "pending",
        "created_at": now,
        "due_at": due_at,
        "sla_breached": False,
    }


class Policies:
    """Compiled review policies; :meth:`match` is called on every answered decision."""

    def __init__(self, spec: ReviewSpec, seed: int | None = None) -> None:
        self.spec = spec
        self.rules = [(p, Expression(p.when) if p.when else None) for p in spec.policies]
        self._sla = {p.queue: sla_seconds(spec, p.queue) for p in [*spec.policies, STOP_POLICY]}
        self._rng = random.Random(seed)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, ctx: Mapping[str, Any]) -> ReviewPolicy | None:
        """The matching policy of highest priority (a hold policy wins a tie), or None."""
        best: ReviewPolicy | None = None
        for p, expr in self.rules:
            hit = expr.test(ctx) if expr is not None else True
            if hit and p.sample is not None:
                hit = self._rng.random() < p.sample
            if not hit:
                continue
            rank = (p.priority, p.mode == "hold")
            if best is None or rank > (best.priority, best.mode == "hold"):
                best = p
        return best

    def item(
        self, decision_id: str, service: str, policy: ReviewPolicy, now: float
    ) -> dict[str, Any]:
        return new_item(decision_id, service, policy, now + self._sla[policy.queue], now)


def _item_dict(row: Any) -> dict[str, Any]:
    d = {str(k): v for k, v in row.items()}
    if d.get("final_output") is not None:
        d["final_output"] = orjson.loads(d["final_output"])
    return d


class ReviewQueue:
    def __init__(self, engine: Engine, service: str, spec: ReviewSpec, output: OutputSpec) -> None:
        self.engine = engine
        self.service = service
        self.spec = spec
        self.output = output
        self.claim_ttl = spec.claim_ttl.seconds

    # -- claiming ------------------------------------------------------------------------

    def _available(self, now: float) -> Any:
        return and_(
            review_items.c.service == self.service,
            or_(
                review_items.c.status == "pending",
                and_(review_items.c.status == "claimed", review_items.c.claim_expires < now),
            ),
        )

    def claim(self, reviewer: str, queue: str | None = None) -> dict[str, Any] | None:
        """Claim the next item for ``reviewer``; None when the queue is empty."""
        for _attempt in range(20):
            now = time.time()
            cond = self._available(now)
            if queue is not None:
                cond = and_(cond, review_items.c.queue == queue)
            # an item this reviewer already reviewed (double review) is for someone else
            done_by_me = select(review_outcomes.c.item_id).where(
                review_outcomes.c.reviewer == reviewer, review_outcomes.c.action != "escalate"
            )
            cond = and_(cond, review_items.c.id.not_in(done_by_me))
            with self.engine.begin() as conn:
                pick = conn.execute(
                    select(review_items.c.id)
                    .where(cond)
                    .order_by(review_items.c.priority.desc(), review_items.c.created_at)
                    .limit(1)
                ).scalar()
                if pick is None:
                    return None
                res = conn.execute(
                    update(review_items)
                    .where(review_items.c.id == pick, self._available(now))
                    .values(
                        status="claimed", claimed_by=reviewer, claim_expires=now + self.claim_ttl
                    )
                )
                if res.rowcount == 1:
                    return self.get(pick, conn=conn)
        return None  # pragma: no cover - only under extreme contention

    def get(self, item_id: str, conn: Connection | None = None) -> dict[str, Any]:
        """One item with what a reviewer needs of its decision (inputs, output, ...)."""
        if conn is None:
            with self.engine.connect() as c:
                return self.get(item_id, c)
        row = (
            conn.execute(
                select(review_items).where(
                    review_items.c.id == item_id, review_items.c.service == self.service
                )
            )
            .mappings()
            .first()
        )
        d = queries.view(conn, row["decision_id"]) if row is not None else None
        if row is None or d is None:
            raise NotFound(f"no review item {item_id!r}")
        d["decided_ts"] = d.pop("ts")
        return {**_item_dict(row), **d}

    # -- outcomes ------------------------------------------------------------------------

    def decide(
        self, item_id: str, reviewer: str, action: str, *, output: Any = None, reason: str = ""
    ) -> dict[str, Any]:
        if action not in ACTIONS:
            raise InputError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        item = self.get(item_id)
        now = time.time()
        if item["status"] != "claimed" or item["claimed_by"] != reviewer:
            raise Conflict(f"review item {item_id} is not claimed by {reviewer}: claim it first")
        if item["claim_expires"] is not None and item["claim_expires"] < now:
            raise Conflict(f"your claim on review item {item_id} expired; claim it again")
        if action == "override":
            if output is None:
                raise InputError("override needs the new output")
            why = labels.label_problem(output, self.output)
            if why is not None:
                raise InputError(f"output {output!r} does not fit the output spec: expected {why}")
            output = labels.normalise_label(output, self.output)
        elif action == "approve":
            output = item["output"]
            if output is None:
                raise InputError(
                    "there is no model answer to approve (the service was "
                    "stopped): override with the right output"
                )
        with self.engine.begin() as conn:
            conn.execute(
                insert(review_outcomes).values(
                    item_id=item_id,
                    service=self.service,
                    model_version=item["model_version"],
                    reviewer=reviewer,
                    action=action,
                    output=None if action == "escalate" else orjson.dumps(output).decode(),
                    reason=reason,
                    ts=now,
                )
            )
            done = conn.execute(
                select(func.count()).where(
                    review_outcomes.c.item_id == item_id, review_outcomes.c.action != "escalate"
                )
            ).scalar()
            values: dict[str, Any] = {"claimed_by": None, "claim_expires": None}
            if action == "escalate":
                values.update(status="pending", priority=item["priority"] + 100, queue="escalated")
            elif int(done or 0) >= item["required"]:
                values.update(
                    status="done", final_output=orjson.dumps(output).decode(), decided_at=now
                )
            else:
                values.update(status="pending")  # a second reviewer is needed
            conn.execute(update(review_items).where(review_items.c.id == item_id).values(**values))
            audit.append(
                conn,
                actor=reviewer,
                action=f"review.{action}",
                target=f"decision:{item['decision_id']}",
                service=self.service,
                before={"output": item["output"]},
                after={"output": output, "status": values.get("status")},
                reason=reason,
            )
            if values.get("status") == "done":
                labels.record(
                    conn,
                    self.service,
                    self.output,
                    [{"id": item["decision_id"], "label": output}],
                    actor=reviewer,
                    source="review",
                    rank=labels.RANK_REVIEW,
                    role="reviewer",
                )
                if item["mode"] == "hold" and self.spec.webhook:
                    enqueue(
                        conn,
                        self.service,
                        "review.held",
                        WebhookSpec(url=self.spec.webhook),
                        {
                            "service": self.service,
                            "decision_id": item["decision_id"],
                            "status": "reviewed",
                            "output": output,
                            "reviewer": reviewer,
                        },
                    )
        return self.get(item_id)

    def open_batch(self, reason: str, size: int = 20) -> int:
        """Queue the newest ``size`` decisions not yet under review (an alert's action)."""
        now = time.time()
        due = now + sla_seconds(self.spec, ALERT_POLICY.queue)
        with self.engine.begin() as conn:
            reviewed = select(review_items.c.decision_id).where(
                review_items.c.service == self.service
            )
            ids = queries.newest_answered(conn, self.service, size, exclude=reviewed)
            if ids:
                conn.execute(
                    insert(review_items),
                    [new_item(did, self.service, ALERT_POLICY, due, now) for did in ids],
                )
            audit.append(
                conn,
                actor=system_actor("monitor"),
                action="review.batch",
                target=f"service:{self.service}",
                service=self.service,
                after={"queued": len(ids), "queue": ALERT_POLICY.queue},
                reason=reason,
            )
        return len(ids)

    def alert_action(self, reason: str) -> str:
        """The ``review`` action of alert rules."""
        n = self.open_batch(reason)
        return f"opened a review batch of {n} recent decisions (queue '{ALERT_POLICY.queue}')"

    # -- SLAs ----------------------------------------------------------------------------

    def window_figures(self, start: float | None, end: float) -> dict[str, Any]:
        """How many outcomes were given in ``[start, end)`` and the share that overrode the
        model (the monitor's review figures)."""
        q = select(review_outcomes.c.action).where(
            review_outcomes.c.service == self.service,
            review_outcomes.c.action != "escalate",
            review_outcomes.c.ts < end,
        )
        if start is not None:
            q = q.where(review_outcomes.c.ts >= start)
        with self.engine.connect() as conn:
            actions = list(conn.execute(q).scalars())
        return {
            "reviewed": len(actions),
            "override_rate": (actions.count("override") / len(actions)) if actions else None,
        }

    def sweep(
        self,
        now: float | None = None,
        on_late: Callable[[Connection, dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Escalate, once, every open item past its due time; returns the escalated items.
        ``on_late(conn, item)`` runs in the escalation's transaction (to raise its alert)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            late = (
                conn.execute(
                    select(
                        review_items.c.id,
                        review_items.c.queue,
                        review_items.c.decision_id,
                        review_items.c.due_at,
                    ).where(
                        review_items.c.service == self.service,
                        review_items.c.status.in_(("pending", "claimed")),
                        review_items.c.due_at < now,
                        review_items.c.sla_breached.is_(False),
                    )
                )
                .mappings()
                .all()
            )
            out = []
            for r in late:
                res = conn.execute(
                    update(review_items)
                    .where(review_items.c.id == r["id"], review_items.c.sla_breached.is_(False))
                    .values(sla_breached=True, priority=review_items.c.priority + 100)
                )
                if res.rowcount == 1:
                    out.append(dict(r))
                    if on_late is not None:
                        on_late(conn, dict(r))
        return out

    # -- reading -------------------------------------------------------------------------

    def for_decision(self, decision_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(review_items).where(review_items.c.decision_id == decision_id))
                .mappings()
                .first()
            )
        return _item_dict(row) if row is not None else None

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Depth and oldest age per queue, throughput per reviewer, override rate per model
        version, agreement on double-reviewed items."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            open_rows = conn.execute(
                select(review_items.c.queue, func.count(), func.min(review_items.c.created_at))
                .where(
                    review_items.c.service == self.service,
                    review_items.c.status.in_(("pending", "claimed")),
                )
                .group_by(review_items.c.queue)
            ).all()
            outcomes = conn.execute(
                select(
                    review_outcomes.c.item_id,
                    review_outcomes.c.reviewer,
                    review_outcomes.c.action,
                    review_outcomes.c.output,
                    review_outcomes.c.model_version,
                ).where(review_outcomes.c.service == self.service)
            ).all()
        queues = {q: {"depth": int(n), "oldest_age_s": now - float(t)} for q, n, t in open_rows}
        per_reviewer: dict[str, int] = {}
        per_version: dict[str, list[int]] = {}
        by_item: dict[str, list[Any]] = {}
        for item_id, reviewer, action, output, version in outcomes:
            if action == "escalate":
                continue
            per_reviewer[reviewer] = per_reviewer.get(reviewer, 0) + 1
            c = per_version.setdefault(str(version), [0, 0])
            c[0] += 1
            c[1] += action == "override"
            by_item.setdefault(item_id, []).append(output)
        doubles = [outs for outs in by_item.values() if len(outs) >= 2]
        agree = sum(1 for outs in doubles if len(set(outs)) == 1)
        return {
            "queues": queues,
            "reviewed_by": per_reviewer,
            "override_rate": {v: c[1] / c[0] for v, c in per_version.items() if c[0]},
            "double_reviewed": len(doubles),
            "agreement": agree / len(doubles) if doubles else None,
        }


_ITEM_COLUMNS = (
    "id",
    "decision_id",
    "service",
    "policy",
    "queue",
    "mode",
    "priority",
    "required",
    "status",
    "created_at",
    "due_at",
    "sla_breached",
)


class ReviewLog(GroupCommitWriter):
    """Review items, committed (in groups) before the caller hears the answer."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(
            engine,
            review_items,
            _ITEM_COLUMNS,
            lambda r: tuple(r[c] for c in _ITEM_COLUMNS),
            what="review item",
        )


def context(
    output: Any, confidence: Any, route: str, version: Any, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "output": output,
        "confidence": confidence,
        "route": route,
        "model_version": version,
        "inputs": inputs,
    }


__all__ = [
    "ACTIONS",
    "ALERT_POLICY",
    "STOP_POLICY",
    "Policies",
    "ReviewLog",
    "ReviewQueue",
    "context",
    "new_item",
    "sla_seconds",
]

"""Review routing: which answered decisions go to people, decided before the caller hears.

Review policies (``shipway.review``) are evaluated on every answered row with its clear inputs;
a matching row becomes a review item, committed (group commit) before the reply. A ``hold``
policy's caller gets a 202 with a status URL instead of the answer; a ``respond_then_review``
caller gets the answer flagged. While the stop switch holds every row for review, all rows
wait for a person.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from shipway.models.predictor import Row
from shipway.review.queue import STOP_POLICY, Policies, ReviewLog, new_item, sla_seconds
from shipway.review.queue import context as review_context

_now = time.time


def held(d: dict[str, Any], policy: str, item: str) -> dict[str, Any]:
    """What the caller of a held decision gets instead of the answer (202)."""
    out = {
        "id": d["id"],
        "status": "pending_review",
        "status_url": f"/v1/decisions/{d['id']}",
        "review": {"policy": policy, "item": item},
    }
    if "row" in d:
        out["row"] = d["row"]
    return out


class ReviewRouting:
    def __init__(
        self, service: str, names: Sequence[str], policies: Policies | None, log: ReviewLog | None
    ) -> None:
        self.service = service
        self.names = list(names)
        self.policies = policies if policies else None
        self.log = log
        spec = policies.spec if policies is not None else None
        self._stop_sla = sla_seconds(spec, STOP_POLICY.queue) if spec is not None else 86400.0

    async def hold_all(self, out: list[dict[str, Any]]) -> None:
        """The stop switch with 'review': every row waits for a person's answer."""
        assert self.log is not None
        now = _now()
        due = now + self._stop_sla
        items = []
        for k, d in enumerate(out):
            item = new_item(d["id"], self.service, STOP_POLICY, due, now)
            items.append(item)
            out[k] = held(d, STOP_POLICY.name, item["id"])
        await self.log.write(items)

    async def route(self, out: list[dict[str, Any]], values: list[Row]) -> None:
        """Policies pick decisions for people; their items are committed before the reply."""
        if self.policies is None:
            return
        assert self.log is not None
        names = self.names
        items = []
        now = _now()
        for k, d in enumerate(out):
            ctx = review_context(
                d["output"],
                d["confidence"],
                d["route"],
                d["model_version"],
                dict(zip(names, values[k], strict=True)),
            )
            policy = self.policies.match(ctx)
            if policy is None:
                continue
            item = self.policies.item(d["id"], self.service, policy, now)
            items.append(item)
            if policy.mode == "hold":
                out[k] = held(d, policy.name, item["id"])
            else:
                d["review"] = {"status": "pending", "policy": policy.name, "item": item["id"]}
        if items:
            await self.log.write(items)


__all__ = ["ReviewRouting", "held"]

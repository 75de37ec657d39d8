"""The predict path: validate, route, answer (guard chain), log, review; then shadows.

Kept lean on purpose: no per-request imports, no database round trip other than the group
commit of the decision log, and models run on their own threads so the event loop only
validates, routes and answers. Bodies are parsed, limited and authenticated before they get
here, by the one ingress (``api/ingress.py``); every face that carries rows (``/v1/predict``,
V2 infer, and later batch sources) calls :meth:`PredictPath.run` with parsed records.

The parts: ``chain.py`` answers each route's rows and records them as decisions,
``review_routing.py`` sends some to people, ``shadows.py`` mirrors answered rows to shadow
versions after the reply is committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shipway.contract import Contract, RecordsResult
from shipway.decisions.ids import new_ids
from shipway.errors import ContractViolation, ModelError, ShipwayError, StoreError
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import probabilities as class_proba
from shipway.serving.chain import Answer, GuardChain
from shipway.serving.review_routing import ReviewRouting
from shipway.serving.router import Route, Router
from shipway.serving.shadows import Shadows

_perf = time.perf_counter


def _violation_message(fields: list[dict[str, Any]], rows: int) -> str:
    first = fields[0]
    where = f"row {first['row']}: " if rows > 1 else ""
    what = f"field {first['field']!r}" if first["field"] is not None else "the row"
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"{where}{what} breaks rule {first['rule']!r}: expected {first['expected']}{more}"


class PredictPath:
    def __init__(
        self,
        *,
        contract: Contract,
        router: Router,
        chain: GuardChain,
        shadows: Shadows,
        review: ReviewRouting,
        metrics: ServiceMetrics,
        on_rejected: Callable[[list[dict[str, Any]], str | None], Awaitable[None]] | None = None,
    ) -> None:
        self.contract = contract
        self.on_rejected = on_rejected
        self.router = router
        self.chain = chain
        self.shadows = shadows
        self.review = review
        self.metrics = metrics
        self.partial = contract.spec.on_bad_rows == "partial"
        self._fields = frozenset(contract.names)
        self._violation_children: dict[tuple[str, str], Any] = {}

    def _count_violations(self, fields: list[dict[str, Any]], bad_rows: int) -> None:
        """Violations by field and rule. Only contract fields become label values: a field
        name a caller made up counts as ``(unknown)``, so callers cannot grow /metrics."""
        self.metrics.rejected_rows.inc(bad_rows)
        known = self._fields
        for v in fields:
            f = v["field"]
            key = (f if f in known else "(row)" if f is None else "(unknown)", v["rule"])
            c = self._violation_children.get(key)
            if c is None:
                c = self._violation_children[key] = self.metrics.contract_violations.labels(*key)
            c.inc()

    async def run(
        self,
        records: list[Any],
        single: bool,
        caller: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        allow_partial: bool = True,
        probabilities: bool = False,
        ids: list[str] | None = None,
        validated: bool = False,
    ) -> dict[str, Any]:
        """Validate and answer parsed records (``single``: one object, not a batch).

        ``validated``: ``records`` are rows already checked against this contract as a table
        (a data source's batch), each a tuple of values in contract order; they are not
        checked again.

        ``ids``: the decision ids to log the rows under (a data source's batch names its
        rows, so a resumed run can tell which are logged); fresh ids otherwise.

        With ``probabilities``, each answer carries ``probabilities`` (``{label: p}``, or null
        where no model probabilities exist: a fallback's answer, a model without them).

        Every answered row is committed to the decision log (by the model's runner thread,
        together with the rest of its model batch, or by the guard chain for other answers)
        before this returns. Raises ShipwayError subclasses on refusal.
        """
        t0 = _perf()
        if validated:
            checked = RecordsResult(values=records, good=list(range(len(records))))
        else:
            checked = self.contract.validate_records(records)
        rejected: list[dict[str, Any]] = []
        if checked.violations:
            self._count_violations(checked.violations, len(checked.bad_rows))
            if self.on_rejected is not None:
                await self.on_rejected(checked.violations, caller)
            if single or not (self.partial and allow_partial) or not checked.values:
                raise ContractViolation(
                    _violation_message(checked.violations, len(records)), checked.violations
                )
            rejected = checked.violations

        if checked.unseen:
            for name, n in checked.unseen.items():
                self.metrics.unseen_values.labels(name).inc(n)
        router = self.router  # one plan for the whole request, even if a swap happens now
        chain = self.chain
        values = checked.values
        n = len(values)
        if ids is None or rejected:  # given ids name the rows as sent: none refused
            ids = new_ids(n)
        if router.stopped is not None:  # the stop switch: no model is called
            routes = [Route(router.champion, "stopped", list(range(n)))]
            answers: list[Awaitable[list[Answer]]] = [
                chain.stopped(router.stopped, routes[0].rows, ids, values, caller, t0)
            ]
        else:
            routes = router.split(values, headers)
            answers = [chain.answer(r, ids, values, caller, t0) for r in routes]
        if len(answers) == 1:
            try:
                results: list[Any] = [await answers[0]]
            except ShipwayError as exc:
                results = [exc]
        else:
            results = list(await asyncio.gather(*answers, return_exceptions=True))
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            if not isinstance(failure, StoreError):
                await chain.log_failures(routes, results, ids, values, caller, t0)
            if isinstance(failure, ShipwayError):
                raise failure
            raise ModelError(f"model call failed: {type(failure).__name__}: {failure}")

        good = checked.good
        count = self.metrics.count_decisions
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        flat = [a for answers_of_route in results for a in answers_of_route]
        for ans in flat:
            version = ans.version
            name = ans.route
            for k, output, conf in zip(ans.rows, ans.outputs, ans.confidence, strict=True):
                out[k] = {
                    "id": ids[k],
                    "output": output,
                    "confidence": conf,
                    "model_version": version,
                    "route": name,
                    "row": good[k],
                }
            count(name, version, len(ans.rows))
            if probabilities:
                pred = ans.pred
                for j, k in enumerate(ans.rows):
                    out[k]["probabilities"] = None if pred is None else class_proba(pred, j)
        if router.stopped is not None:
            if chain.stop.behavior == "review":
                await self.review.hold_all(out)
        else:
            if self.review.policies is not None:
                await self.review.route(out, values)
            if router.shadows:
                self.shadows.start(router.shadows, ids, values)
        if single:
            d = out[0]
            del d["row"]
            return d
        body: dict[str, Any] = {"decisions": out}
        if rejected:
            body["rejected"] = rejected
        else:
            for d in out:
                del d["row"]
        return body

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for background shadow work (at shutdown)."""
        await self.shadows.drain(timeout)


__all__ = ["PredictPath"]

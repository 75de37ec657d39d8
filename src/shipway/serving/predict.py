"""The predict path: validate, route, score, log, answer; then mirror to shadows.

Kept lean on purpose: no per-request imports, no database round trip other than the group
commit of the decision log, and models run on their own threads so the event loop only
parses, validates and answers. Shadows run after the answer is committed, in the background,
bounded and timed out, so they never change what or when a caller hears.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from shipway.contract import Contract
from shipway.decisions import DecisionLog, ShadowLog
from shipway.decisions.ids import new_ids
from shipway.errors import BadRequest, ContractViolation, ModelError, ShipwayError, StoreError
from shipway.manifest import RolloutSpec
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Row
from shipway.serving.router import Job, Lane, Route, Router

_now = time.time
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
        service: str,
        contract: Contract,
        router: Router,
        log: DecisionLog,
        shadow_log: ShadowLog,
        metrics: ServiceMetrics,
        max_batch_rows: int,
        rollout: RolloutSpec,
    ) -> None:
        self.service = service
        self.contract = contract
        self.router = router
        self.log = log
        self.shadow_log = shadow_log
        self.metrics = metrics
        self.max_batch_rows = max_batch_rows
        self.partial = contract.spec.on_bad_rows == "partial"
        self.shadow_timeout = rollout.shadow_timeout_ms / 1000.0
        self.shadow_max_pending = rollout.shadow_max_pending
        self._names = contract.names
        self._violation_children: dict[tuple[str, str], Any] = {}
        self._decision_children: dict[tuple[str, int], Any] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _count_violations(self, fields: list[dict[str, Any]], bad_rows: int) -> None:
        self.metrics.rejected_rows.inc(bad_rows)
        for v in fields:
            key = (str(v["field"]), v["rule"])
            c = self._violation_children.get(key)
            if c is None:
                c = self._violation_children[key] = self.metrics.contract_violations.labels(*key)
            c.inc()

    def _parse(self, payload: Any) -> tuple[list[Any], bool]:
        if type(payload) is not dict or "inputs" not in payload:
            raise BadRequest('the body must be a JSON object with an "inputs" field')
        if len(payload) > 1:
            extra = sorted(payload.keys() - {"inputs"})
            raise BadRequest(f'unknown top-level field(s): {extra}; only "inputs" is read')
        inputs = payload["inputs"]
        if type(inputs) is dict:
            return [inputs], True
        if type(inputs) is not list:
            raise BadRequest('"inputs" must be an object (one row) or a list of objects (a batch)')
        if not inputs:
            raise BadRequest('"inputs" is an empty list: send at least one row')
        if len(inputs) > self.max_batch_rows:
            raise BadRequest(
                f'"inputs" has {len(inputs)} rows; this service takes at most '
                f"{self.max_batch_rows} per request (serving.max_batch_rows)"
            )
        return inputs, False

    def _recorder(
        self, route: Route, ids: list[str], values: list[Row], caller: str | None, t0: float
    ) -> Callable[[Predictions], list[dict[str, Any]]]:
        """Builds the route's decision rows on the runner thread, once the model answered."""
        names = self._names
        service = self.service
        version = route.lane.version
        name = route.route
        positions = route.rows

        def record(pred: Predictions) -> list[dict[str, Any]]:
            latency_ms = (_perf() - t0) * 1000.0
            ts = _now()
            return [
                {"id": ids[k], "ts": ts, "service": service, "model_version": version,
                 "route": name, "inputs": dict(zip(names, values[k], strict=True)),
                 "output": o, "confidence": c, "latency_ms": latency_ms, "caller": caller}
                for k, o, c in zip(positions, pred.outputs, pred.confidence, strict=True)
            ]  # fmt: skip

        return record

    async def _score(self, route: Route, values: list[Row], record: Any) -> Predictions:
        rows = [values[i] for i in route.rows] if len(route.rows) != len(values) else values
        try:
            return await route.lane.runner.submit(Job(rows, record))
        except ShipwayError:
            raise
        except Exception as exc:
            raise ModelError(
                f"model version {route.lane.version} failed: {type(exc).__name__}: {exc}"
            ) from None

    async def run(
        self, payload: Any, caller: str | None = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Answer one predict request body; raises ShipwayError subclasses on refusal.

        Every answered row is committed to the decision log (by the model's runner thread,
        together with the rest of its model batch) before this returns.
        """
        t0 = _perf()
        records, single = self._parse(payload)
        checked = self.contract.validate_records(records)
        rejected: list[dict[str, Any]] = []
        if checked.violations:
            self._count_violations(checked.violations, len(checked.bad_rows))
            if single or not self.partial or not checked.values:
                raise ContractViolation(
                    _violation_message(checked.violations, len(records)), checked.violations
                )
            rejected = checked.violations

        router = self.router  # one plan for the whole request, even if a swap happens now
        values = checked.values
        n = len(values)
        ids = new_ids(n)
        routes = router.split(values, headers)
        jobs = [(r, self._recorder(r, ids, values, caller, t0)) for r in routes]
        if len(jobs) == 1:
            try:
                results: list[Any] = [await self._score(jobs[0][0], values, jobs[0][1])]
            except ShipwayError as exc:
                results = [exc]
        else:
            results = list(await asyncio.gather(
                *(self._score(r, values, rec) for r, rec in jobs), return_exceptions=True
            ))  # fmt: skip
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            if not isinstance(failure, StoreError):
                await self._log_failure(routes, results, ids, values, caller, t0)
            if isinstance(failure, ShipwayError):
                raise failure
            raise ModelError(f"model call failed: {type(failure).__name__}: {failure}")

        good = checked.good
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for route, pred in zip(routes, results, strict=True):
            version = route.lane.version
            name = route.route
            for k, output, conf in zip(route.rows, pred.outputs, pred.confidence, strict=True):
                out[k] = {"id": ids[k], "output": output, "confidence": conf,
                          "model_version": version, "route": name, "row": good[k]}  # fmt: skip
            self._count_decisions(name, version, len(route.rows))
        if router.shadows:
            self._start_shadows(router.shadows, ids, values)
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

    def _count_decisions(self, route: str, version: int, n: int) -> None:
        key = (route, version)
        c = self._decision_children.get(key)
        if c is None:
            c = self._decision_children[key] = self.metrics.decisions.labels(route, str(version))
        c.inc(n)

    async def _log_failure(
        self,
        routes: list[Route],
        results: list[Any],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
    ) -> None:
        """Failed rows become decisions with ``error`` set (their callers get an error)."""
        names = self._names
        latency_ms = (_perf() - t0) * 1000.0
        ts = _now()
        rows = []
        for route, res in zip(routes, results, strict=True):
            if not isinstance(res, BaseException):
                continue
            self.metrics.model_errors.labels(str(route.lane.version)).inc()
            msg = res.message if isinstance(res, ShipwayError) else f"{type(res).__name__}: {res}"
            for k in route.rows:
                rows.append({
                    "id": ids[k], "ts": ts, "service": self.service,
                    "model_version": route.lane.version, "route": route.route,
                    "inputs": dict(zip(names, values[k], strict=True)), "output": None,
                    "confidence": None, "latency_ms": latency_ms, "caller": caller,
                    "error": msg[:2000],
                })  # fmt: skip
        await self.log.write(rows)

    # -- shadows ---------------------------------------------------------------------------

    def _start_shadows(self, shadows: tuple[Lane, ...], ids: list[str], values: list[Row]
                       ) -> None:
        for lane in shadows:
            if lane.in_flight + len(values) > self.shadow_max_pending:
                self.metrics.shadow_skipped.labels(str(lane.version)).inc(len(values))
                continue
            task = asyncio.ensure_future(self._shadow(lane, ids, values))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _shadow(self, lane: Lane, ids: list[str], values: list[Row]) -> None:
        n = len(values)
        lane.in_flight += n
        fut = lane.runner.submit(Job(values))

        def _done(_f: asyncio.Future[Any]) -> None:
            lane.in_flight -= n
            if not _f.cancelled():
                _f.exception()  # retrieved, so a late failure is not reported as unhandled

        fut.add_done_callback(_done)
        t0 = _perf()
        error: str | None = None
        pred: Predictions | None = None
        try:
            pred = await asyncio.wait_for(asyncio.shield(fut), self.shadow_timeout)
        except TimeoutError:
            error = f"timeout: no answer within {self.shadow_timeout * 1000:.0f} ms"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
        latency_ms = (_perf() - t0) * 1000.0
        ts = _now()
        version = lane.version
        if pred is not None:
            shadow_rows = [
                {"decision_id": did, "ts": ts, "service": self.service,
                 "model_version": version, "output": o, "confidence": c,
                 "latency_ms": latency_ms, "error": None}
                for did, o, c in zip(ids, pred.outputs, pred.confidence, strict=True)
            ]  # fmt: skip
        else:
            self.metrics.shadow_errors.labels(str(version)).inc(n)
            shadow_rows = [
                {"decision_id": did, "ts": ts, "service": self.service,
                 "model_version": version, "output": None, "confidence": None,
                 "latency_ms": latency_ms, "error": error}
                for did in ids
            ]  # fmt: skip
        try:
            await self.shadow_log.write(shadow_rows)
        except ShipwayError:
            self.metrics.shadow_errors.labels(str(version)).inc(n)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for background shadow work (used at shutdown)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)


__all__ = ["PredictPath"]

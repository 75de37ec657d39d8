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
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from shipway.contract import Contract
from shipway.decisions import DecisionLog, ShadowLog
from shipway.decisions.ids import new_ids
from shipway.errors import (
    BadRequest,
    ContractViolation,
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    ServiceStopped,
    ShipwayError,
    StoreError,
)
from shipway.manifest import (
    CacheSpec,
    FallbackStep,
    GuardsSpec,
    RolloutSpec,
    StopSpec,
)
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Row
from shipway.review.queue import STOP_POLICY, Policies, ReviewLog, new_item, sla_seconds
from shipway.review.queue import context as review_context
from shipway.serving.guards import AnswerCache, OutputCheck, backoff_s, is_retryable
from shipway.serving.router import Job, Lane, Route, Router

_now = time.time
_perf = time.perf_counter


def _held(d: dict[str, Any], policy: str, item: str) -> dict[str, Any]:
    """What the caller of a held decision gets instead of the answer (202)."""
    out = {"id": d["id"], "status": "pending_review", "status_url": f"/v1/decisions/{d['id']}",
           "review": {"policy": policy, "item": item}}  # fmt: skip
    if "row" in d:
        out["row"] = d["row"]
    return out


def _same(d: dict[str, Any]) -> dict[str, Any]:
    return d


def _retrieve(fut: Any) -> None:
    """Mark a late result of an abandoned job as seen (no 'never retrieved' warnings)."""
    if not fut.cancelled():
        fut.exception()


def _violation_message(fields: list[dict[str, Any]], rows: int) -> str:
    first = fields[0]
    where = f"row {first['row']}: " if rows > 1 else ""
    what = f"field {first['field']!r}" if first["field"] is not None else "the row"
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"{where}{what} breaks rule {first['rule']!r}: expected {first['expected']}{more}"


@dataclass(frozen=True, slots=True)
class Answer:
    """Who answered the rows of one route, and with what."""

    rows: list[int]
    route: str
    version: int | None
    outputs: list[Any]
    confidence: list[Any]


@dataclass(frozen=True)
class Fallback:
    """One fallback step, ready: its spec, and the lane of a model or version step."""

    step: FallbackStep
    lane: Lane | None = None


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
        guards: GuardsSpec | None = None,
        output_check: OutputCheck | None = None,
        fallbacks: list[Fallback] | None = None,
        cache: CacheSpec | None = None,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        stop: StopSpec | None = None,
        review: Policies | None = None,
        review_log: ReviewLog | None = None,
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
        self.guards = guards or GuardsSpec()
        self.timeout = self.guards.timeout_ms / 1000.0
        self.check = output_check
        self.fallbacks = fallbacks or []
        cache = cache or CacheSpec()
        self.cache_ttl = cache.ttl_s
        wants_cache = cache.ttl_s > 0 or any(f.step.kind == "cache" for f in self.fallbacks)
        self.cache = AnswerCache(cache.max_entries) if wants_cache else None
        self._names = contract.names
        self.redact = redact
        self.stop = stop or StopSpec()
        self.review = review if review else None
        self.review_log = review_log
        stop_queue = STOP_POLICY.queue
        self._stop_sla = sla_seconds(review.spec, stop_queue) if review is not None else 86400.0
        self._violation_children: dict[tuple[str, str], Any] = {}
        self._decision_children: dict[tuple[str, str], Any] = {}
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
        self,
        rows: list[int],
        route: str,
        version: int | None,
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
        reason: str | None = None,
    ) -> Callable[[Predictions], list[dict[str, Any]]]:
        """Builds the decision rows of one answer (on the runner thread for model answers)."""
        names = self._names
        service = self.service
        redact = self.redact or _same

        def record(pred: Predictions) -> list[dict[str, Any]]:
            latency_ms = (_perf() - t0) * 1000.0
            ts = _now()
            costs = pred.cost if pred.cost is not None else repeat(None)
            return [
                {"id": ids[k], "ts": ts, "service": service, "model_version": version,
                 "route": route, "inputs": redact(dict(zip(names, values[k], strict=True))),
                 "output": o, "confidence": c, "latency_ms": latency_ms, "caller": caller,
                 "reason": reason, "cost": cost}
                for k, o, c, cost in zip(rows, pred.outputs, pred.confidence, costs, strict=False)
            ]  # fmt: skip

        return record

    async def _call(self, lane: Lane, job: Job, timeout: float) -> Predictions:
        """One attempt: the lane scores the job within ``timeout`` or the job is abandoned."""
        fut = lane.submit(job)
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            if job.abandon():
                if isinstance(fut, asyncio.Task):
                    fut.cancel()
                else:
                    fut.add_done_callback(_retrieve)
                raise ModelTimeout(f"no answer within {timeout * 1000:.0f} ms") from None
            res = await fut  # the answer is being recorded right now: it stands
        except ShipwayError:
            raise
        except Exception as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}") from None
        if isinstance(res, Exception):
            raise res
        return res  # type: ignore[no-any-return]

    def _failed(self, lane: Lane, exc: ShipwayError, reasons: list[str]) -> None:
        version = str(lane.version)
        self.metrics.model_errors.labels(version, exc.code).inc()
        breaker = lane.breaker
        if breaker is not None and breaker.failure():
            self.metrics.breaker_opened.labels(version).inc()
        reasons.append(f"{lane.name}: {exc.message}")

    async def _guarded(
        self, lane: Lane, rows: list[Row], record: Any, reasons: list[str]
    ) -> Predictions | None:
        """Timeout, retries with jittered backoff, breaker, output checks; None if it failed."""
        g = self.guards
        breaker = lane.breaker
        for attempt in range(g.retries + 1):
            if breaker is not None and not breaker.allow():
                reasons.append(f"{lane.name}: circuit breaker open")
                return None
            job = Job(rows, record, self.check)
            try:
                pred = await self._call(lane, job, self.timeout)
            except StoreError:
                raise
            except ModelError as exc:
                self._failed(lane, exc, reasons)
                if attempt < g.retries and is_retryable(exc):
                    self.metrics.retries.labels(str(lane.version)).inc()
                    await asyncio.sleep(backoff_s(attempt, g.backoff_ms, g.backoff_max_ms))
                    continue
                return None
            if breaker is not None:
                breaker.success()
            return pred
        return None  # pragma: no cover - the loop always returns

    async def _answer(
        self,
        route: Route,
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
    ) -> Answer:
        """The route's rows answered by its lane, or by the fallback chain; else 503."""
        lane = route.lane
        positions = route.rows
        rows = [values[i] for i in positions] if len(positions) != len(values) else values
        cache = self.cache
        if cache is not None and self.cache_ttl > 0:
            hit = self._from_cache(rows, self.cache_ttl, lane.version)
            if hit is not None:
                self.metrics.cache_hits.inc(len(rows))
                return await self._answer_with(
                    positions, "cache", hit[2], hit[0], hit[1], ids, values, caller, t0, None
                )
        reasons: list[str] = []
        record = self._recorder(positions, route.route, lane.version, ids, values, caller, t0)
        pred = await self._guarded(lane, rows, record, reasons)
        if pred is not None:
            if cache is not None:
                cache.put_many(rows, pred.outputs, pred.confidence, lane.version)
            if pred.cost is not None:
                self.metrics.cost.inc(sum(c for c in pred.cost if c))
            return Answer(positions, route.route, lane.version, pred.outputs, pred.confidence)
        return await self._fall_back(positions, rows, reasons, ids, values, caller, t0)

    async def _stopped(
        self,
        reason: str,
        positions: list[int],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
    ) -> Answer:
        """The stop switch is on: no model is called; the manifest's safe behaviour answers."""
        why = f"service stopped: {reason}"
        n = len(positions)
        if self.stop.behavior == "review":  # logged without an answer; a person gives it
            return await self._answer_with(
                positions, "stopped", None, [None] * n, [None] * n, ids, values, caller, t0, why
            )
        if self.stop.behavior == "default" and self.stop.answer is not None:
            a = self.stop.answer
            return await self._answer_with(
                positions, "stopped", None, [a["output"]] * n, [a.get("confidence")] * n,
                ids, values, caller, t0, why,
            )  # fmt: skip
        raise ServiceStopped(f"the service is stopped ({reason}); no model is called")

    def _from_cache(
        self, rows: list[Row], max_age: float, version: int | None
    ) -> tuple[list[Any], list[Any], int | None] | None:
        assert self.cache is not None
        outs, confs, ver = [], [], None
        for r in rows:
            got = self.cache.get(r, max_age, version)
            if got is None:
                return None
            outs.append(got[0])
            confs.append(got[1])
            ver = got[2]
        return outs, confs, ver

    async def _answer_with(
        self,
        positions: list[int],
        route: str,
        version: int | None,
        outputs: list[Any],
        confidence: list[Any],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
        reason: str | None,
    ) -> Answer:
        """An answer that did not come from a lane's runner: log it here, then answer."""
        record = self._recorder(positions, route, version, ids, values, caller, t0, reason)
        await self.log.write(record(Predictions(outputs, confidence)))
        return Answer(positions, route, version, outputs, confidence)

    async def _fall_back(
        self,
        positions: list[int],
        rows: list[Row],
        reasons: list[str],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
    ) -> Answer:
        n = len(rows)
        for fb in self.fallbacks:
            step = fb.step
            kind = step.kind
            if kind in ("model", "version"):
                lane = fb.lane
                assert lane is not None
                if lane.breaker is not None and not lane.breaker.allow():
                    reasons.append(f"{step.route}: circuit breaker open")
                    continue
                why = "; ".join(reasons)
                record = self._recorder(
                    positions, step.route, lane.version, ids, values, caller, t0, why
                )
                timeout = (step.timeout_ms or self.guards.timeout_ms) / 1000.0
                try:
                    pred = await self._call(lane, Job(rows, record, self.check), timeout)
                except StoreError:
                    raise
                except ModelError as exc:
                    self._failed(lane, exc, reasons)
                    continue
                if lane.breaker is not None:
                    lane.breaker.success()
                self.metrics.fallbacks.labels(step.route).inc(n)
                return Answer(positions, step.route, lane.version, pred.outputs, pred.confidence)
            if kind == "cache":
                hit = self._from_cache(rows, step.max_age_s, None) if self.cache else None
                if hit is None:
                    reasons.append("cache: no answer remembered for these inputs")
                    continue
                self.metrics.fallbacks.labels("cache").inc(n)
                return await self._answer_with(
                    positions, "cache", hit[2], hit[0], hit[1], ids, values, caller, t0,
                    "; ".join(reasons),
                )  # fmt: skip
            default = step.default or {}
            self.metrics.fallbacks.labels("default").inc(n)
            return await self._answer_with(
                positions, "default", None, [default["output"]] * n,
                [default.get("confidence")] * n, ids, values, caller, t0, "; ".join(reasons),
            )  # fmt: skip
        self.metrics.unanswered.inc(n)
        raise ModelUnavailable(
            "the model could not answer and no fallback step could either: " + "; ".join(reasons),
            attempts=reasons,
        )

    async def run(
        self, payload: Any, caller: str | None = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Answer one predict request body; raises ShipwayError subclasses on refusal.

        Every answered row is committed to the decision log (by the model's runner thread,
        together with the rest of its model batch, or here for fallback answers) before this
        returns.
        """
        records, single = self._parse(payload)
        return await self.run_records(records, single, caller, headers)

    async def run_records(
        self,
        records: list[Any],
        single: bool,
        caller: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        allow_partial: bool = True,
    ) -> dict[str, Any]:
        """Validate and answer parsed records (``single``: one object, not a batch)."""
        t0 = _perf()
        checked = self.contract.validate_records(records)
        rejected: list[dict[str, Any]] = []
        if checked.violations:
            self._count_violations(checked.violations, len(checked.bad_rows))
            if single or not (self.partial and allow_partial) or not checked.values:
                raise ContractViolation(
                    _violation_message(checked.violations, len(records)), checked.violations
                )
            rejected = checked.violations

        router = self.router  # one plan for the whole request, even if a swap happens now
        values = checked.values
        n = len(values)
        ids = new_ids(n)
        if router.stopped is not None:  # the stop switch: no model is called
            routes = [Route(router.champion, "stopped", list(range(n)))]
            answers = [self._stopped(router.stopped, routes[0].rows, ids, values, caller, t0)]
        else:
            routes = router.split(values, headers)
            answers = [self._answer(r, ids, values, caller, t0) for r in routes]
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
                await self._log_failure(routes, results, ids, values, caller, t0)
            if isinstance(failure, ShipwayError):
                raise failure
            raise ModelError(f"model call failed: {type(failure).__name__}: {failure}")

        good = checked.good
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for ans in results:
            version = ans.version
            name = ans.route
            for k, output, conf in zip(ans.rows, ans.outputs, ans.confidence, strict=True):
                out[k] = {"id": ids[k], "output": output, "confidence": conf,
                          "model_version": version, "route": name, "row": good[k]}  # fmt: skip
            self._count_decisions(name, version, len(ans.rows))
        if router.stopped is not None and self.stop.behavior == "review":
            await self._hold_all(out)
        elif self.review is not None and router.stopped is None:
            await self._route_to_review(out, values)
        if router.shadows and router.stopped is None:
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

    async def _hold_all(self, out: list[dict[str, Any]]) -> None:
        """The stop switch with 'review': every row waits for a person's answer."""
        assert self.review_log is not None
        due = _now() + self._stop_sla
        items = []
        for k, d in enumerate(out):
            item = new_item(d["id"], self.service, STOP_POLICY, due, _now())
            items.append(item)
            out[k] = _held(d, STOP_POLICY.name, item["id"])
        await self.review_log.write(items)

    async def _route_to_review(self, out: list[dict[str, Any]], values: list[Row]) -> None:
        """Policies pick decisions for people; their items are committed before the reply."""
        assert self.review is not None and self.review_log is not None
        names = self._names
        items = []
        now = _now()
        for k, d in enumerate(out):
            ctx = review_context(d["output"], d["confidence"], d["route"], d["model_version"],
                                 dict(zip(names, values[k], strict=True)))  # fmt: skip
            policy = self.review.match(ctx)
            if policy is None:
                continue
            item = self.review.item(d["id"], self.service, policy, now)
            items.append(item)
            if policy.mode == "hold":
                out[k] = _held(d, policy.name, item["id"])
            else:
                d["review"] = {"status": "pending", "policy": policy.name, "item": item["id"]}
        if items:
            await self.review_log.write(items)

    def _count_decisions(self, route: str, version: int | None, n: int) -> None:
        key = (route, str(version))
        c = self._decision_children.get(key)
        if c is None:
            c = self._decision_children[key] = self.metrics.decisions.labels(*key)
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
        """Failed rows become decisions with ``error`` set (their callers get an error).

        Rows of another route of the same request that were answered are already logged;
        they stand as decisions even though the request as a whole failed.
        """
        names = self._names
        redact = self.redact or _same
        latency_ms = (_perf() - t0) * 1000.0
        ts = _now()
        rows = []
        for route, res in zip(routes, results, strict=True):
            if not isinstance(res, BaseException):
                continue
            msg = res.message if isinstance(res, ShipwayError) else f"{type(res).__name__}: {res}"
            if not isinstance(res, ModelUnavailable | ServiceStopped):
                self.metrics.model_errors.labels(str(route.lane.version), "model_error").inc()
            for k in route.rows:
                rows.append({
                    "id": ids[k], "ts": ts, "service": self.service,
                    "model_version": route.lane.version, "route": route.route,
                    "inputs": redact(dict(zip(names, values[k], strict=True))), "output": None,
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
        fut = lane.submit(Job(values))

        def _done(_f: asyncio.Future[Any]) -> None:
            lane.in_flight -= n
            if not _f.cancelled():
                _f.exception()  # retrieved, so a late failure is not reported as unhandled

        fut.add_done_callback(_done)
        t0 = _perf()
        error: str | None = None
        pred: Predictions | None = None
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.shadow_timeout)
            if isinstance(res, Exception):
                raise res
            pred = res
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

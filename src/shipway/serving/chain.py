"""The guard chain: who answers a route's rows, and the decisions their answers become.

For each route of a request (champion or canary rows) the chain tries the route's lane with a
timeout, retries with jittered backoff (only errors that are safe to retry), a circuit breaker
and output checks; then the manifest's fallback steps in order (another model or version, a
remembered answer, a declared default). Each answer is recorded as decisions by
:func:`shipway.decisions.records.decision_row`: a lane's answers by its runner thread, in the
same transaction as the rest of its model batch; every other answer here, before it returns.
When every step fails the chain raises :class:`ModelUnavailable` with the reasons.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from shipway.decisions import DecisionLog
from shipway.decisions.records import INVALID_ANSWER, Redact, decision_row
from shipway.errors import (
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    OutputInvalid,
    ServiceStopped,
    ShipwayError,
    StoreError,
)
from shipway.govern.pii import Redactor
from shipway.manifest import CacheSpec, FallbackStep, GuardsSpec, StopSpec
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions, Row
from shipway.serving.guards import AnswerCache, OutputCheck, backoff_s, is_retryable
from shipway.serving.router import Job, Lane, Route

#: How much of a model's invalid answer a decision's reason keeps (after PII treatment).
MAX_REASON = 300

_now = time.time
_perf = time.perf_counter


def _same(d: dict[str, Any]) -> dict[str, Any]:
    return d


class Deadlines:
    """Timeouts of jobs handed to runner threads, all behind one timer.

    A job whose deadline passes is abandoned unless its runner already took it (its answer is
    then being recorded and stands), and its caller gets :class:`ModelTimeout`. One heap and
    one armed timer serve every job, instead of a timer handle per attempt; finished jobs leave
    the heap as it is cleaned from the oldest end.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[Any], Job, float]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(
        self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], job: Job, timeout: float
    ) -> None:
        heap = self._heap
        while heap and heap[0][2].done():
            heapq.heappop(heap)
        when = loop.time() + timeout
        self._seq += 1
        heapq.heappush(heap, (when, self._seq, fut, job, timeout))
        if when < self._at:
            self._arm(loop, when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._at = None, math.inf
        heap = self._heap
        now = loop.time()
        while heap and (heap[0][0] <= now or heap[0][2].done()):
            _when, _seq, fut, job, timeout = heapq.heappop(heap)
            if not fut.done() and job.abandon():
                fut.set_exception(ModelTimeout(f"no answer within {timeout * 1000:.0f} ms"))
        if heap:
            self._arm(loop, heap[0][0])


def _retrieve(fut: Any) -> None:
    """Mark a late result of an abandoned job as seen (no 'never retrieved' warnings)."""
    if not fut.cancelled():
        fut.exception()


@dataclass(frozen=True, slots=True)
class Answer:
    """Who answered the rows of one route, and with what."""

    rows: list[int]
    route: str
    version: int | None
    outputs: list[Any]
    confidence: list[Any]
    pred: Predictions | None = None
    """The model's own answer (with its class probabilities), when a model answered."""


@dataclass(frozen=True, slots=True)
class Spent:
    """What earlier attempts at one row cost: money and (prompt, completion) tokens."""

    cost: float = 0.0
    tokens: tuple[int, int] = (0, 0)

    def plus(
        self, cost: float | None, tokens: tuple[int, int] | None
    ) -> tuple[float | None, tuple[int, int] | None]:
        """This row's own cost and tokens with the earlier attempts' added."""
        t = tokens or (0, 0)
        return (cost or 0.0) + self.cost, (t[0] + self.tokens[0], t[1] + self.tokens[1])


@dataclass(frozen=True)
class Fallback:
    """One fallback step, ready: its spec, and the lane of a model or version step."""

    step: FallbackStep
    lane: Lane | None = None


class GuardChain:
    def __init__(
        self,
        *,
        service: str,
        names: Sequence[str],
        log: DecisionLog,
        metrics: ServiceMetrics,
        guards: GuardsSpec | None = None,
        output_check: OutputCheck | None = None,
        fallbacks: list[Fallback] | None = None,
        cache: CacheSpec | None = None,
        redact: Redactor | None = None,
        stop: StopSpec | None = None,
    ) -> None:
        self.service = service
        self.names = list(names)
        self.log = log
        self.metrics = metrics
        self.guards = guards or GuardsSpec()
        self.timeout = self.guards.timeout_ms / 1000.0
        self.check = output_check
        self.fallbacks = fallbacks or []
        cache = cache or CacheSpec()
        self.cache_ttl = cache.ttl_s
        wants_cache = cache.ttl_s > 0 or any(f.step.kind == "cache" for f in self.fallbacks)
        self.cache = AnswerCache(cache.max_entries) if wants_cache else None
        self.redactor = redact if redact else None
        self.redact: Redact = self.redactor or _same
        self.stop = stop or StopSpec()
        self.deadlines = Deadlines()

    # -- decisions ---------------------------------------------------------------------------

    def recorder(
        self,
        rows: list[int],
        route: str,
        version: int | None,
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
        reason: str | dict[int, str] | None = None,
        spent: dict[int, Spent] | None = None,
    ) -> Callable[[Predictions], list[dict[str, Any]]]:
        """Builds the decision rows of one answer (on the runner thread for model answers).

        Rows whose answer is marked invalid are left out (they fall back). ``reason`` is one
        text for every row or one per position; ``spent`` is what earlier attempts at a
        position cost (billed invalid answers), added to its decision's cost."""
        names = self.names
        service = self.service
        redact = self.redact

        def record(pred: Predictions) -> list[dict[str, Any]]:
            latency_ms = (_perf() - t0) * 1000.0
            ts = _now()
            costs = pred.cost if pred.cost is not None else repeat(None)
            invalid = pred.invalid if pred.invalid is not None else repeat(None)
            tokens = pred.tokens if pred.tokens is not None else repeat(None)
            out = []
            for k, o, c, cost, bad, tok in zip(
                rows, pred.outputs, pred.confidence, costs, invalid, tokens, strict=False
            ):
                if bad:
                    continue
                if spent and k in spent:
                    cost, tok = spent[k].plus(cost, tok)
                out.append(
                    decision_row(
                        ids[k],
                        ts,
                        service,
                        version,
                        route,
                        redact(dict(zip(names, values[k], strict=True))),
                        o,
                        c,
                        latency_ms,
                        caller,
                        reason=reason.get(k) if isinstance(reason, dict) else reason,
                        cost=cost,
                        tokens=tok,
                    )
                )
            return out

        return record

    async def log_failures(
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
        names = self.names
        redact = self.redact
        latency_ms = (_perf() - t0) * 1000.0
        ts = _now()
        rows = []
        for route, res in zip(routes, results, strict=True):
            if not isinstance(res, BaseException):
                continue
            logged: frozenset[int] = frozenset()
            spent: dict[int, Spent] = {}
            if isinstance(res, ModelUnavailable):  # some rows answered before the rest failed
                logged, spent = res.logged_rows, res.spent or {}
            if isinstance(res, ShipwayError):
                code, msg = res.code, res.message
            else:
                code, msg = "model_error", f"{type(res).__name__}: {res}"
            msg = f"{code}: {self.scrub(msg, [values[k] for k in route.rows])}"
            if not isinstance(res, ModelUnavailable | ServiceStopped):
                self.metrics.model_errors.labels(route.lane.label, "model_error").inc()
            for k in route.rows:
                if k in logged:
                    continue
                rows.append(
                    decision_row(
                        ids[k],
                        ts,
                        self.service,
                        route.lane.version,
                        route.route,
                        redact(dict(zip(names, values[k], strict=True))),
                        None,
                        None,
                        latency_ms,
                        caller,
                        error=msg[:2000],
                        cost=spent[k].cost if k in spent else None,
                        tokens=spent[k].tokens if k in spent else None,
                    )
                )
        await self.log.write(rows)

    # -- one attempt -------------------------------------------------------------------------

    async def _call(self, lane: Lane, job: Job, timeout: float) -> Predictions:
        """One attempt: the lane scores the job within ``timeout`` or the job is abandoned."""
        fut = lane.submit(job)
        if not isinstance(fut, asyncio.Task):
            # A runner thread's future: its deadline joins the others behind one timer.
            self.deadlines.add(asyncio.get_running_loop(), fut, job, timeout)
            try:
                res = await fut
            except ShipwayError:
                raise
            except Exception as exc:
                raise ModelError(f"{type(exc).__name__}: {exc}") from None
            if isinstance(res, Exception):
                raise res
            return res
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
        return res

    def scrub(self, text: str, rows: Sequence[Row]) -> str:
        """Error text with the raw values of personal fields of ``rows`` treated (PII)."""
        if self.redactor is None:
            return text
        names = self.names
        return self.redactor.scrub(text, [dict(zip(names, r, strict=True)) for r in rows])

    def _failed(
        self, lane: Lane, exc: ShipwayError, reasons: list[str], rows: Sequence[Row]
    ) -> None:
        self.metrics.model_errors.labels(lane.label, exc.code).inc()
        if not isinstance(exc, OutputInvalid) or self.guards.breaker.count_invalid:
            self._breaker_failure(lane)
        elif lane.breaker is not None:
            lane.breaker.success()  # it answered (badly): not an outage, and a trial resolves
        reasons.append(f"{lane.name}: {self.scrub(exc.message, rows)[:MAX_REASON]}")

    def _breaker_failure(self, lane: Lane) -> None:
        breaker = lane.breaker
        if breaker is not None and breaker.failure():
            self.metrics.breaker_opened.labels(lane.label).inc()

    def _answered(self, lane: Lane, pred: Predictions) -> list[int]:
        """After a call that returned: the breaker and metrics told; the invalid rows."""
        bad = [j for j, why in enumerate(pred.invalid or ()) if why]
        if pred.cost is not None:
            self.metrics.cost.inc(sum(c for c in pred.cost if c))
        if pred.tokens is not None:
            self.metrics.tokens.labels("prompt").inc(sum(t[0] for t in pred.tokens))
            self.metrics.tokens.labels("completion").inc(sum(t[1] for t in pred.tokens))
        if bad:
            self.metrics.invalid_answers.labels(lane.label).inc(len(bad))
            if self.guards.breaker.count_invalid:
                self._breaker_failure(lane)
                return bad
        if lane.breaker is not None:
            lane.breaker.success()
        return bad

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
                self._failed(lane, exc, reasons, rows)
                if attempt < g.retries and is_retryable(exc):
                    self.metrics.retries.labels(lane.label).inc()
                    await asyncio.sleep(backoff_s(attempt, g.backoff_ms, g.backoff_max_ms))
                    continue
                return None
            return pred
        return None  # pragma: no cover - the loop always returns

    # -- a route's answer --------------------------------------------------------------------

    async def answer(
        self,
        route: Route,
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
    ) -> list[Answer]:
        """The route's rows answered by its lane, or by the fallback chain; else 503.

        Rows whose answers fail the output checks go down the fallback chain on their own;
        the other rows keep the model's answers (so there may be several answers)."""
        lane = route.lane
        positions = route.rows
        rows = [values[i] for i in positions] if len(positions) != len(values) else values
        cache = self.cache
        if cache is not None and self.cache_ttl > 0:
            hit = self._from_cache(rows, self.cache_ttl, lane.version)
            if hit is not None:
                self.metrics.cache_hits.inc(len(rows))
                return [
                    await self._answer_with(
                        positions, "cache", hit[2], hit[0], hit[1], ids, values, caller, t0, None
                    )
                ]
        reasons: list[str] = []
        record = self.recorder(positions, route.route, lane.version, ids, values, caller, t0)
        pred = await self._guarded(lane, rows, record, reasons)
        if pred is None:
            return await self._fall_back(positions, rows, reasons, ids, values, caller, t0)
        bad = self._answered(lane, pred)
        if not bad:
            if cache is not None:
                cache.put_many(rows, pred.outputs, pred.confidence, lane.version)
            return [
                Answer(positions, route.route, lane.version, pred.outputs, pred.confidence, pred)
            ]
        earlier = {k: list(reasons) for k in positions} if reasons else {}  # failed attempts
        return await self._partly(lane, route.route, pred, bad, positions, rows, earlier, ids,
                                  values, caller, t0, {})  # fmt: skip

    async def _partly(
        self,
        lane: Lane,
        route: str,
        pred: Predictions,
        bad: list[int],
        positions: list[int],
        rows: list[Row],
        reasons: dict[int, list[str]],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
        spent: dict[int, Spent],
        step: int = 0,
    ) -> list[Answer]:
        """A call answered some rows well (already logged) and some not: the good ones stand,
        the others go on down the fallback chain from ``step``, each with its own reason and
        with what its invalid answer cost."""
        badset = set(bad)
        good = [j for j in range(len(rows)) if j not in badset]
        out: list[Answer] = []
        if good:
            sub = pred.take(good)
            if self.cache is not None:
                self.cache.put_many(
                    [rows[j] for j in good], sub.outputs, sub.confidence, lane.version
                )
            out.append(
                Answer([positions[j] for j in good], route, lane.version, sub.outputs,
                       sub.confidence, sub)
            )  # fmt: skip
        assert pred.invalid is not None
        why = {
            positions[j]: [
                *reasons.get(positions[j], ()),
                # treated for personal values first, then cut (a cut value would not match)
                f"{lane.name}{INVALID_ANSWER}"
                + self.scrub(pred.invalid[j] or "", [rows[j]])[:MAX_REASON],
            ]
            for j in bad
        }
        spent = dict(spent)
        for j in bad:
            k = positions[j]
            cost = pred.cost[j] if pred.cost is not None else None
            tok = pred.tokens[j] if pred.tokens is not None else None
            if cost is None and tok is None:
                continue  # nothing billed (a model in this process)
            was = spent.get(k, Spent())
            total, toks = was.plus(cost, tok)
            spent[k] = Spent(total or 0.0, toks or (0, 0))
        try:
            rest = await self._fall_back(
                [positions[j] for j in bad],
                [rows[j] for j in bad],
                why,
                ids,
                values,
                caller,
                t0,
                spent=spent,
                start=step,
            )
        except ModelUnavailable as exc:
            done = frozenset(a for ans in out for a in ans.rows)
            exc.logged_rows = exc.logged_rows | done
            raise
        return out + rest

    async def stopped(
        self,
        reason: str,
        positions: list[int],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
    ) -> list[Answer]:
        """The stop switch is on: no model is called; the manifest's safe behaviour answers."""
        why = f"service stopped: {reason}"
        n = len(positions)
        if self.stop.behavior == "review":  # logged without an answer; a person gives it
            return [
                await self._answer_with(
                    positions, "stopped", None, [None] * n, [None] * n, ids, values, caller, t0,
                    why,
                )
            ]  # fmt: skip
        if self.stop.behavior == "default" and self.stop.answer is not None:
            a = self.stop.answer
            return [
                await self._answer_with(
                    positions,
                    "stopped",
                    None,
                    [a["output"]] * n,
                    [a.get("confidence")] * n,
                    ids,
                    values,
                    caller,
                    t0,
                    why,
                )
            ]
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
        reason: str | dict[int, str] | None,
        spent: dict[int, Spent] | None = None,
    ) -> Answer:
        """An answer that did not come from a lane's runner: log it here, then answer."""
        record = self.recorder(positions, route, version, ids, values, caller, t0, reason, spent)
        await self.log.write(record(Predictions(outputs, confidence)))
        return Answer(positions, route, version, outputs, confidence)

    async def _fall_back(
        self,
        positions: list[int],
        rows: list[Row],
        reasons: list[str] | dict[int, list[str]],
        ids: list[str],
        values: list[Row],
        caller: str | None,
        t0: float,
        *,
        spent: dict[int, Spent] | None = None,
        start: int = 0,
    ) -> list[Answer]:
        """The manifest's fallback steps from ``start``, in order, for rows the model could
        not answer. ``reasons`` are shared by every row or kept per position; ``spent`` is
        what earlier attempts at a position cost. A model step that answers some rows badly
        passes only those rows on; a step that gives no answer (None) passes them on too."""
        n = len(rows)
        why: dict[int, list[str]] = (
            {k: list(v) for k, v in reasons.items()}
            if isinstance(reasons, dict)
            else {k: list(reasons) for k in positions}
        )
        spent = spent or {}

        def joined(ks: list[int]) -> dict[int, str]:
            return {k: "; ".join(why[k]) for k in ks}

        def add(ks: list[int], text: str) -> None:
            for k in ks:
                why[k].append(text)

        for i in range(start, len(self.fallbacks)):
            fb = self.fallbacks[i]
            step = fb.step
            kind = step.kind
            if kind in ("model", "version"):
                lane = fb.lane
                assert lane is not None
                if lane.breaker is not None and not lane.breaker.allow():
                    add(positions, f"{step.route}: circuit breaker open")
                    continue
                record = self.recorder(
                    positions, step.route, lane.version, ids, values, caller, t0,
                    joined(positions), spent,
                )  # fmt: skip
                timeout = (step.timeout_ms or self.guards.timeout_ms) / 1000.0
                try:
                    pred = await self._call(lane, Job(rows, record, self.check), timeout)
                except StoreError:
                    raise
                except ModelError as exc:
                    failed: list[str] = []
                    self._failed(lane, exc, failed, rows)
                    add(positions, failed[0])
                    continue
                bad = self._answered(lane, pred)
                answered = n - len(bad)
                if answered:
                    self.metrics.fallbacks.labels(step.route).inc(answered)
                if not bad:
                    return [
                        Answer(
                            positions, step.route, lane.version, pred.outputs, pred.confidence,
                            pred,
                        )
                    ]  # fmt: skip
                return await self._partly(
                    lane, step.route, pred, bad, positions, rows, why, ids, values, caller, t0,
                    spent, i + 1,
                )  # fmt: skip
            if kind == "cache":
                hit = self._from_cache(rows, step.max_age_s, None) if self.cache else None
                if hit is None:
                    add(positions, "cache: no answer remembered for these inputs")
                    continue
                self.metrics.fallbacks.labels("cache").inc(n)
                return [
                    await self._answer_with(
                        positions, "cache", hit[2], hit[0], hit[1], ids, values, caller, t0,
                        joined(positions), spent,
                    )
                ]  # fmt: skip
            default = step.default or {}
            self.metrics.fallbacks.labels("default").inc(n)
            return [
                await self._answer_with(
                    positions, "default", None, [default["output"]] * n,
                    [default.get("confidence")] * n, ids, values, caller, t0,
                    joined(positions), spent,
                )
            ]  # fmt: skip
        self.metrics.unanswered.inc(n)
        texts = list(dict.fromkeys(r for k in positions for r in why[k]))
        unavailable = ModelUnavailable(
            "the model could not answer and no fallback step could either: " + "; ".join(texts),
            attempts=texts,
        )
        unavailable.spent = {k: spent[k] for k in positions if k in spent}
        raise unavailable


__all__ = ["Answer", "Fallback", "GuardChain", "Spent"]

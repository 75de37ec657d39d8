"""Composition, with models: a running :class:`Service` is its parts (``parts.py``) plus the
serving runtime: loaded model lanes behind a router, the predict path, authentication,
admission, and the scheduler's periodic tasks.

The CLI's ``serve``, the HTTP app and the tests all get a Service the same way:
``Service.open(path_to_manifest, settings)``; commands that need no model open
``ServiceParts`` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import hashlib
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shipway.contract import Contract
from shipway.decisions import DecisionLog, RejectionLog, ShadowLog, labels, queries
from shipway.decisions.ids import new_id
from shipway.decisions.records import rejection_rows
from shipway.errors import (
    ConfigError,
    Conflict,
    InputError,
    ModelError,
    NotFound,
    Overloaded,
    RateLimited,
    ShipwayError,
)
from shipway.govern import audit
from shipway.govern.auth import Authenticator
from shipway.govern.keys import KeyRing
from shipway.govern.pii import Redactor
from shipway.govern.roles import system_actor
from shipway.jobs import Scheduler, Task
from shipway.lifecycle.rollout import RolloutState
from shipway.manifest import Manifest
from shipway.models import ModelVersion, Predictor, Registry
from shipway.models.predictor import FunctionPredictor, for_fields, import_callable, probe
from shipway.parts import ServiceParts
from shipway.review.explain import explain
from shipway.review.queue import Policies, ReviewLog
from shipway.serving.chain import Fallback, GuardChain
from shipway.serving.guards import BREAKER_CODES, OPEN, Breaker, OutputCheck
from shipway.serving.limits import Gate
from shipway.serving.predict import PredictPath
from shipway.serving.review_routing import ReviewRouting
from shipway.serving.router import Lane, Router
from shipway.serving.shadows import Shadows
from shipway.settings import Settings
from shipway.store import Store
from shipway.store.location import Location

log = logging.getLogger("shipway")

#: How often a server looks for a new rollout plan (seconds).
ROLLOUT_POLL_S = 0.25
#: How often a server looks for key changes (seconds).
KEYS_POLL_S = 0.25
#: How often the outbox looks for notifications to deliver (seconds).
OUTBOX_POLL_S = 0.5
#: How often the manifest file is looked at for edits (seconds).
MANIFEST_POLL_S = 2.0
#: How often review SLAs are checked (seconds).
REVIEW_SWEEP_S = 2.0
#: Lanes no plan uses any more are stopped after this long (in-flight requests finish first).
LANE_GRACE_S = 30.0


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def reference_rows(store: Store, mv: ModelVersion, names: list[str], n: int = 64) -> list[Any]:
    """A few rows of the version's reference data, in contract order (for load-time probes)."""
    if not mv.reference_sha256:
        return []
    data = store.artifacts.read_verified(mv.reference_sha256)
    table = pq.read_table(io.BytesIO(data), columns=names).slice(0, n)
    cols = [table.column(c).to_pylist() for c in names]
    return list(zip(*cols, strict=True))


def _function_predictor(fn: Any, names: list[str], _numeric: bool) -> Predictor:
    return FunctionPredictor(fn, names)


def load_predictor(
    store: Store, registry: Registry, mv: ModelVersion, manifest: Manifest
) -> Predictor:
    predictor = registry.load(
        mv,
        manifest.contract,
        list(manifest.output.labels or []),
        endpoint=manifest.endpoint,
        timeout_s=manifest.guards.timeout_ms / 1000.0,
    )
    if hasattr(predictor, "probe"):
        names = [f.name for f in manifest.contract.inputs]
        probe(predictor, reference_rows(store, mv, names))
    return predictor


class Lanes:
    """Loaded model versions, kept while a plan uses them (and a grace period after)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._lanes: dict[int, Lane] = {}
        self._unused_since: dict[int, float] = {}
        self._lock = threading.Lock()

    def get(self, version: int) -> Lane:
        with self._lock:
            lane = self._lanes.get(version)
        if lane is not None:
            return lane
        s = self.service
        mv = s.registry.get(s.name, version)
        if mv.contract_sha256 != s.manifest.contract.digest():
            log.warning(
                "model version %s was checked against another contract than the manifest's "
                "(edited since?)",
                version,
            )
        predictor = load_predictor(s.store, s.registry, mv, s.manifest)
        lane = s.make_lane(version, predictor)
        with self._lock:
            existing = self._lanes.get(version)
            if existing is not None:
                return existing
            self._lanes[version] = lane
        if s.started:
            lane.start()
        return lane

    def start_all(self) -> None:
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.start()

    def retire_unused(self, in_use: set[int], keep: set[int], now: float) -> None:
        stop: list[Lane] = []
        with self._lock:
            for v, lane in list(self._lanes.items()):
                if v in in_use or v in keep:
                    self._unused_since.pop(v, None)
                    continue
                since = self._unused_since.setdefault(v, now)
                if now - since >= LANE_GRACE_S:
                    stop.append(lane)
                    del self._lanes[v]
                    del self._unused_since[v]
        for lane in stop:
            lane.stop()

    def stop_all(self) -> None:
        with self._lock:
            lanes = list(self._lanes.values())
            self._lanes.clear()
        for lane in lanes:
            lane.stop()


class Service(ServiceParts):
    """A manifest brought to life: its parts, plus models, routing, logging and admission."""

    def __init__(
        self, manifest: Manifest, location: Location, settings: Settings, store: Store
    ) -> None:
        super().__init__(manifest, location, settings, store)
        self.contract = Contract(manifest.contract)
        self.dev_mode = settings.dev_mode
        secret = settings.secret()  # refuses to start without a real secret outside dev mode
        self.secret_key = secret
        self.log = DecisionLog(
            store.engine,
            max_batch=manifest.serving.decision_log.max_batch,
            key_field=manifest.contract.key_field,
        )
        self.shadow_log = ShadowLog(store.engine)
        self.rejection_log = RejectionLog(store.engine)
        self.return_probabilities = manifest.serving.return_probabilities
        self.review_log = ReviewLog(store.engine)
        self.lanes = Lanes(self)
        self.started = False
        self.keyring = KeyRing(store.engine)
        self.keyring.refresh_if_changed()
        self.authenticator = Authenticator(self.keyring, manifest.auth.oidc)
        self.redactor = Redactor(manifest.pii, secret)
        if self.redactor:  # reference statistics hold training values: treat them too
            self.registry.treat_references(
                self.name, self.redactor.treat_reference, system_actor("pii")
            )
        self.output_check = OutputCheck(manifest.output, manifest.guards.output)
        self.fallbacks = self._build_fallbacks()
        self.gate = Gate(manifest.serving.limits)
        self.state = self.rollout.state()
        chain = GuardChain(
            service=self.name,
            names=self.contract.names,
            log=self.log,
            metrics=self.metrics,
            guards=manifest.guards,
            output_check=self.output_check,
            fallbacks=self.fallbacks,
            cache=manifest.serving.cache,
            redact=self.redactor if self.redactor else None,
            stop=manifest.stop,
        )
        self.predict_path = PredictPath(
            contract=self.contract,
            router=self._build_router(self.state),
            chain=chain,
            shadows=Shadows(
                self.name,
                self.shadow_log,
                self.metrics,
                timeout_s=manifest.rollout.shadow_timeout_ms / 1000.0,
                max_pending=manifest.rollout.shadow_max_pending,
            ),
            review=ReviewRouting(
                self.name, self.contract.names, Policies(manifest.review), self.review_log
            ),
            metrics=self.metrics,
            on_rejected=self._log_rejections,
        )
        self._publish(self.state)
        self._refresh_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        """The server's event loop (set when it starts): scheduled source runs use it."""
        self._source_runs: set[concurrent.futures.Future[Any]] = set()
        self._closing = False
        self.scheduler = Scheduler(store.engine, self.name, metrics=self.metrics)
        self._manifest_digest = _file_digest(location.manifest_path)
        self._schedule()

    def make_lane(self, version: int | None, predictor: Predictor, name: str = "") -> Lane:
        """A lane with the manifest's batching and its own circuit breaker."""
        return Lane(
            version,
            predictor,
            self.metrics,
            self.log,
            batching=self.manifest.serving.batching,
            breaker=Breaker(self.manifest.guards.breaker),
            name=name,
        )

    def _build_fallbacks(self) -> list[Fallback]:
        out = []
        for i, step in enumerate(self.manifest.guards.fallback):
            where = f"guards.fallback[{i}]"
            if step.kind == "model":
                assert step.model is not None
                if not step.model.startswith("python:"):
                    raise ConfigError(f"{where}.model must be python:module:function")
                try:
                    fn = import_callable(step.model)
                except ModelError as exc:
                    raise ConfigError(f"{where}.model: {exc.message}") from None
                predictor: Predictor = for_fields(
                    functools.partial(_function_predictor, fn), self.manifest.contract.inputs
                )
                out.append(Fallback(step, self.make_lane(None, predictor, step.route)))
            elif step.kind == "version":
                assert step.version is not None
                mv = self.registry.get(self.name, step.version)
                predictor = load_predictor(self.store, self.registry, mv, self.manifest)
                out.append(Fallback(step, self.make_lane(step.version, predictor, step.route)))
            elif step.kind == "default":
                default = step.default or {}
                try:
                    self.output_check.check_default(default["output"], default.get("confidence"))
                except ModelError as exc:
                    raise ConfigError(
                        f"{where}.default is not a valid answer: {exc.message}"
                    ) from None
                out.append(Fallback(step))
            else:
                out.append(Fallback(step))
        return out

    @classmethod
    def open(cls, path: str | Path, settings: Settings | None = None) -> Service:
        parts = super().open(path, settings)
        assert isinstance(parts, Service)
        return parts

    # -- rollout plan -> router -----------------------------------------------------------

    def _build_router(self, st: RolloutState) -> Router:
        champion = self.lanes.get(st.champion)
        canary = self.lanes.get(st.canary) if st.canary is not None else None
        shadows = [self.lanes.get(v) for v in st.shadows]
        if st.previous_champion is not None:
            # Keep the previous champion loaded so that a rollback is instant.
            with contextlib.suppress(ShipwayError):
                self.lanes.get(st.previous_champion)
        return Router(
            champion,
            canary=canary,
            percent=st.canary_percent,
            key=st.canary_key,
            shadows=shadows,
            names=self.contract.names,
            generation=st.generation,
            stopped=(st.stop_reason or "stopped") if st.stopped else None,
        )

    def _publish(self, st: RolloutState) -> None:
        m = self.metrics
        m.rollout.labels("champion").set(st.champion)
        m.rollout.labels("canary").set(st.canary or 0)
        m.canary_percent.set(st.canary_percent if st.canary is not None else 0)

    @property
    def router(self) -> Router:
        return self.predict_path.router

    def champion_version(self) -> int:
        return self.router.champion.version or self.state.champion

    def refresh(self) -> bool:
        """Load the stored plan if it changed; swap the router. True when it changed."""
        with self._refresh_lock:
            if self.rollout.generation() == self.router.generation:
                return False
            st = self.rollout.state()
            router = self._build_router(st)  # loads new versions here, off the request path
            self.predict_path.router = router
            self.state = st
            self._publish(st)
            self._retire_lanes()
            log.info(
                "rollout plan generation %s: champion v%s, canary %s, shadows %s",
                st.generation,
                st.champion,
                st.canary,
                list(st.shadows),
            )
            return True

    def _retire_lanes(self) -> None:
        in_use = {lane.version for lane in self.router.lanes() if lane.version is not None}
        prev = self.state.previous_champion
        self.lanes.retire_unused(in_use, {prev} if prev is not None else set(), time.monotonic())

    # -- what a starting server says ---------------------------------------------------------

    def startup_notes(self) -> list[tuple[str, str]]:
        """(level, line) pairs a starting server prints: what it serves, how callers
        authenticate, what it watches, and anything that differs from what the manifest says."""
        m = self.manifest
        st = self.state
        notes: list[tuple[str, str]] = []
        if self.dev_mode:
            notes.append(("warn", "authentication is OFF (development mode)"))
        else:
            oidc = " and OIDC tokens" if m.auth.oidc is not None else ""
            notes.append(("info", f"authentication on: API keys{oidc}"))
        notes.append(
            (
                "info",
                f"{len(m.monitor.alerts)} alert rules, {len(m.review.policies)} review policies, "
                f"{len(m.guards.fallback)} fallback steps; scheduled: "
                + ", ".join(t["task"] for t in self.scheduler.status()),
            )
        )
        if st.champion != m.model.version:
            notes.append(
                (
                    "warn",
                    f"the store's champion is v{st.champion} (set by 'shipway rollout'), the "
                    f"manifest names v{m.model.version}: v{st.champion} answers",
                )
            )
        if st.stopped:
            notes.append(("warn", f"the stop switch is on: {st.stop_reason}"))
        return notes

    def _watch_manifest(self) -> None:
        digest = _file_digest(self.location.manifest_path)
        if digest != self._manifest_digest and digest is not None:
            self._manifest_digest = digest
            log.warning(
                "%s changed on disk; restart shipway serve to apply it (run 'shipway validate' "
                "first)",
                self.location.manifest_path,
            )

    # -- periodic work ---------------------------------------------------------------------

    def _schedule(self) -> None:
        """Every periodic task of a server, each with its own interval (see jobs/)."""
        m = self.manifest
        add = self.scheduler.add

        def rollout_poll() -> None:
            self.refresh()
            self._retire_lanes()

        add(Task("rollout", ROLLOUT_POLL_S, rollout_poll))
        add(Task("keys", KEYS_POLL_S, self.keyring.refresh_if_changed))
        oidc = self.authenticator.oidc
        if oidc is not None and oidc.remote is not None:
            add(Task("jwks", 1.0, oidc.remote.maintain))
        add(Task("outbox", OUTBOX_POLL_S, self.outbox.deliver_due))
        add(Task("manifest", MANIFEST_POLL_S, self._watch_manifest))
        if m.review.policies:
            add(Task("review-sla", REVIEW_SWEEP_S, self.sweep_reviews))
        if m.retention.decisions is not None or m.retention.shadow_decisions is not None:
            add(
                Task(
                    "retention",
                    m.retention.interval.seconds,
                    lambda: self.purge(system_actor("retention")),
                    once=True,
                    first_s=ROLLOUT_POLL_S,
                )
            )
        add(
            Task(
                "audit-checkpoint",
                m.audit.checkpoint_every.seconds,
                lambda: self.write_checkpoint(self.secret_key),
                once=True,
                first_s=ROLLOUT_POLL_S,
            )
        )
        if m.rollout.auto:
            add(Task("canary-step", m.rollout.check_interval_s, self._auto_step))
        if m.monitor.schedule:
            add(Task("monitor", m.monitor.interval.seconds, self.monitor.run, once=True))
        train = m.training
        if train is not None and (train.interval is not None or train.schedule is not None):
            add(
                Task(
                    "retrain",
                    train.interval.seconds if train.interval is not None else 3600.0,
                    self._scheduled_retrain,
                    once=True,
                    cron=train.schedule,
                )
            )
        for source in m.sources:
            if source.interval is not None or source.schedule is not None:
                every = source.interval.seconds if source.interval is not None else 3600.0
                add(
                    Task(
                        f"source:{source.name}",
                        every,
                        functools.partial(self._run_source_on_loop, source.name),
                        once=True,
                        cron=source.schedule,
                        retry_s=source.retry_after.seconds if source.retry_after else None,
                    )
                )

    def _scheduled_retrain(self) -> None:
        """A scheduled retrain, waited for on the scheduler's thread (the fit runs in a
        process of its own); one already under way (started by an alert) is left to finish."""
        from shipway.errors import Conflict

        if self._closing:
            return
        with contextlib.suppress(Conflict):
            self.retrain("schedule", system_actor("retrain-schedule"), wait=True)

    def _run_source_on_loop(self, name: str) -> None:
        """A scheduled source run, on the server's event loop (where requests are answered),
        waited for by the scheduler's thread."""
        loop = self.loop
        if self._closing:
            return  # the server is shutting down: the next start takes the files
        if loop is None or loop.is_closed():
            raise RuntimeError(f"source {name}: the server's event loop is not running")
        future = asyncio.run_coroutine_threadsafe(
            self.run_source(name, system_actor(f"source-{name}")), loop
        )
        self._source_runs.add(future)
        try:
            future.result()
        finally:
            self._source_runs.discard(future)

    def source(self, name: str) -> Any:  # a manifest.SourceSpec
        spec = next((s for s in self.manifest.sources if s.name == name), None)
        if spec is None:
            known = ", ".join(s.name for s in self.manifest.sources) or "none"
            raise NotFound(f"the manifest has no source {name!r} (sources: {known})")
        return spec

    def _source_uses(self, spec: Any, actor: str) -> Any:  # a data.Uses
        """What a source's run needs from this service: the predict path (each row logged
        under the id the batch gives it), the log's answers for a resumed batch, the label
        store joined as feedback import joins, and where datasets live."""
        from shipway.data import Uses
        from shipway.decisions import queries

        async def score(rows: list[Any], caller: str, ids: list[str]) -> Any:
            return await self.predict(
                rows, caller=caller, allow_partial=False, ids=ids, validated=True
            )

        def answers(ids: list[str]) -> dict[str, dict[str, Any]]:
            return queries.answers(self.store.engine, self.name, ids)

        label = None
        if spec.use == "labels":
            within = spec.labels.within.seconds
            join = self.key_join(within) if spec.labels.key else None

            def label(conn: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return labels.record(
                    conn, self.name, self.manifest.output, items, actor=actor,
                    source=f"source:{spec.name}", rank=labels.RANK_LABELER, join=join,
                )  # fmt: skip

        return Uses(
            score=score,
            answers=answers,
            label=label,
            datasets_dir=self.location.storage_dir / "datasets",
            treat=self.redactor.treated if self.redactor else None,
        )

    async def run_source(
        self, name: str, actor: str, progress: Any = None, pushed: Any = None
    ) -> Any:  # a data.RunResult
        """Take a source's new batches: check their columns, validate, quarantine, and score
        (every row a logged decision), keep as a dataset version, or store as labels."""
        from shipway.data import run_source

        spec = self.source(name)
        return await run_source(**self._source_run(spec, actor, progress), pushed=pushed)

    def _source_run(self, spec: Any, actor: str, progress: Any) -> dict[str, Any]:
        """What every run of ``spec`` is given: the store, where it lives, the contract."""
        return {
            "engine": self.store.engine,
            "service": self.name,
            "spec": spec,
            "base": self.location.manifest_path.parent,
            "staging": self.location.storage_dir / "staged",
            "contract": self.manifest.contract,
            "uses": self._source_uses(spec, actor),
            "actor": actor,
            "progress": progress,
        }

    async def replay_quarantine(
        self, name: str, actor: str, seqs: list[int] | None = None, progress: Any = None
    ) -> Any:  # a data.RunResult
        """Check a source's held rows again and use those that now pass; audited."""
        from shipway.data import replay

        spec = self.source(name)
        treated = sorted(self.manifest.pii)
        if treated and spec.use != "labels":
            raise InputError(
                f"quarantined rows keep the personal fields {treated} treated (pii), so "
                "replaying them would use dropped, masked or hashed values; fix the source "
                "and send the rows again instead"
            )
        result = await replay(**self._source_run(spec, actor, progress), seqs=seqs)
        await asyncio.to_thread(
            functools.partial(
                audit.record,
                self.store.engine,
                actor=actor,
                action="quarantine.replay",
                target=f"source:{name}",
                service=self.name,
                after={
                    "run_id": result.run_id,
                    "rows": result.rows_in,
                    "moved_on": result.rows_good,
                    "still_held": result.rows_bad,
                    "status": result.status,
                },
            )
        )
        return result

    def _auto_step(self) -> None:
        spec = self.manifest.rollout
        st = self.state
        if st.canary is None or st.canary_percent >= spec.steps[-1]:
            return
        if self.rollout.canary_report(st).ready:
            with contextlib.suppress(ShipwayError):
                self.rollout.step(
                    actor=system_actor("auto-step"), reason="automatic step: checks passed"
                )
                self.refresh()

    async def _log_rejections(self, violations: list[dict[str, Any]], caller: str | None) -> None:
        """Keep a refused request's violations in the store, treated as the log treats
        personal fields (the caller hears the 422 once they are committed)."""
        rows = rejection_rows(
            new_id(),
            time.time(),
            self.name,
            caller,
            violations,
            frozenset(self.contract.names),
            self.redactor.treated if self.redactor else None,
        )
        await self.rejection_log.write(rows)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, schedule: bool = True) -> None:
        """Start the writers and model runners; with ``schedule``, the periodic tasks too (a
        server's; a CLI command that scores in this process leaves them to the server)."""
        if self.started:
            return
        self.log.start()
        self.shadow_log.start()
        self.rejection_log.start()
        self.review_log.start()
        self.started = True
        self.lanes.start_all()
        for fb in self.fallbacks:
            if fb.lane is not None:
                fb.lane.start()
        self.metrics.model_loaded.set(1)
        # Everything loaded so far lives as long as the process: keep it out of GC scans.
        gc.collect()
        gc.freeze()
        if schedule:
            self.scheduler.start()

    async def drain(self, timeout: float | None = None) -> None:
        """Before :meth:`stop`, on the event loop: start no new source run and let those
        under way finish (their files and rows recorded), then take no new shadow work and
        wait for the shadow calls already started, so each is logged."""
        self._closing = True
        running = [asyncio.wrap_future(f) for f in list(self._source_runs)]
        if running:
            await asyncio.wait(running, timeout=timeout or 60.0)
        await self.predict_path.drain(timeout)

    def stop(self) -> None:
        """Finish in-flight model calls and commit every queued decision, then close."""
        self.scheduler.stop()
        self.lanes.stop_all()
        for fb in self.fallbacks:
            if fb.lane is not None:
                fb.lane.stop()
        self.log.stop()
        self.shadow_log.stop()
        self.rejection_log.stop()
        self.review_log.stop()
        self.metrics.model_loaded.set(0)
        self.close()
        self.started = False

    # -- the faces call these ----------------------------------------------------------------

    async def predict(
        self,
        records: list[Any],
        single: bool = False,
        caller: str | None = None,
        headers: Any = None,
        *,
        allow_partial: bool = True,
        probabilities: bool = False,
        ids: list[str] | None = None,
        validated: bool = False,
    ) -> dict[str, Any]:
        """Validate, answer and log parsed rows (the ingress has parsed and limited them);
        class probabilities when asked for or when the manifest always returns them.
        ``validated``: rows a data source checked as a table, as tuples in contract order."""
        return await self.predict_path.run(
            records,
            single,
            caller,
            headers,
            allow_partial=allow_partial,
            probabilities=probabilities or self.return_probabilities,
            ids=ids,
            validated=validated,
        )

    def admit(self, keys: Any) -> None:
        """Let one request in (pair with :meth:`release`), or refuse it: 429 when a rate
        limit of the caller is used up, 503 when too much is in flight."""
        try:
            self.gate.enter(keys)
        except RateLimited:
            self.metrics.rate_limited.inc()
            raise
        except Overloaded:
            self.metrics.shed.inc()
            raise

    def release(self) -> None:
        self.gate.leave()

    def breakers(self) -> dict[str, str]:
        """Circuit breaker state of every loaded lane (and updates its gauge)."""
        lanes = [*self.router.lanes(), *(fb.lane for fb in self.fallbacks if fb.lane)]
        out = {}
        for lane in lanes:
            if lane.breaker is None or not lane.breaker.enabled:
                continue
            state = lane.breaker.state
            out[lane.name] = state
            self.metrics.breaker_state.labels(lane.label).set(BREAKER_CODES[state])
        return out

    def readiness(self) -> dict[str, Any]:
        """Ready when the model is loaded, the store answers and requests can be answered: the
        champion can be called (its breaker is not open), or a fallback step can answer
        without it. ``champion_callable`` says which, truthfully."""
        store_ok = self.store.ping()
        breakers = self.breakers()
        champion = self.router.champion
        champion_open = breakers.get(champion.name) == OPEN
        can_fall_back = any(fb.step.kind != "cache" for fb in self.fallbacks)
        checks = {
            "model_loaded": self.started,
            "store_reachable": store_ok,
            "champion_callable": not champion_open,
            "answerable": not champion_open or can_fall_back,
        }
        return {
            "ready": checks["model_loaded"] and store_ok and checks["answerable"],
            "checks": checks,
            "service": self.name,
            "model_version": champion.version,
            "breakers": breakers,
            "in_flight": self.gate.in_flight,
            "stopped": self.state.stop_reason if self.state.stopped else None,
            "auth": "OFF (development mode): every caller is an admin" if self.dev_mode else "on",
        }

    def decision(self, decision_id: str) -> dict[str, Any]:
        """A logged decision; one under review says so, and a held one answers with the
        reviewer's output once there is one (its model's answer is kept as model_output)."""
        d = queries.get(self.store.engine, decision_id)
        if d is None:
            raise NotFound(f"no decision with id {decision_id!r}")
        item = self.review.for_decision(decision_id)
        if item is not None:
            done = item["status"] == "done"
            d["review"] = {
                "status": "reviewed" if done else "pending",
                "policy": item["policy"],
                "mode": item["mode"],
                "item": item["id"],
                "final_output": item["final_output"],
            }
            if item["mode"] == "hold":
                d["model_output"] = d["output"]
                d["output"] = item["final_output"] if done else None
                d["status"] = "reviewed" if done else "pending_review"
                if not done:
                    d["review"]["final_output"] = None
        return d

    def explain(self, item_id: str) -> dict[str, Any]:
        """The inputs that pushed a reviewed decision's answer most (computed now)."""
        item = self.review.get(item_id)
        if self.manifest.pii:
            raise Conflict(
                "explanations are off for services with PII treatments: the log "
                "holds treated values the model never saw"
            )
        version = item["model_version"]
        if version is None:
            raise Conflict("this decision was not answered by a registered model version")
        lane = self.lanes.get(version)
        mv = self.registry.get(self.name, version)
        names = self.contract.names
        row = tuple(item["inputs"].get(n) for n in names)
        reference = reference_rows(self.store, mv, names, n=20)
        top = explain(lane.predictor, names, row, item["output"], reference)
        return {
            "item": item_id,
            "decision_id": item["decision_id"],
            "answer": item["output"],
            "method": "permutation against 20 reference rows",
            "features": top,
        }

    def describe(self) -> dict[str, Any]:
        champion = self.registry.get(self.name, self.champion_version())
        return {
            "service": self.name,
            "description": self.manifest.service.description,
            "owner": self.manifest.service.owner.model_dump(),
            "champion": {
                "version": champion.version,
                "flavor": champion.flavor,
                "uri": champion.uri,
                "metrics": champion.metrics,
            },
            "rollout": self.state.to_dict(),
            "contract": self.manifest.contract.model_dump(mode="json", exclude_none=True),
            "output": self.manifest.output.model_dump(mode="json", exclude_none=True),
        }

    def models(self) -> list[dict[str, Any]]:
        st = self.state
        out = []
        for mv in self.registry.list(self.name):
            roles = []
            if mv.version == st.champion:
                roles.append("champion")
            if mv.version == st.canary:
                roles.append("canary")
            if mv.version in st.shadows:
                roles.append("shadow")
            if mv.version == st.previous_champion:
                roles.append("previous")
            d = mv.to_dict()
            d.pop("reference", None)
            d["aliases"] = roles
            out.append(d)
        return out


__all__ = ["Service", "load_predictor", "reference_rows"]

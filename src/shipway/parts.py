"""Composition, without models: a service's parts opened from its manifest.

``ServiceParts.open(manifest)`` gives the manifest, the store and every domain part that works
on stored state (registry, rollout plan, review queue, monitor, notification outbox, keys),
wired the one way Shipway wires them, without loading a model. The CLI and the HTTP control
routes use it; :class:`shipway.service.Service` adds the serving runtime (model lanes, the
predict path, authentication, the scheduler's tasks) on top.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from shipway.decisions import labels
from shipway.errors import InputError, ModelError, NotFound
from shipway.govern import audit
from shipway.govern.keys import Keys
from shipway.govern.pii import Redactor
from shipway.govern.retention import purge
from shipway.govern.roles import LABEL, Principal
from shipway.lifecycle.rollout import Rollout, alert_actions
from shipway.manifest import Manifest
from shipway.metrics import ServiceMetrics
from shipway.models import Registry
from shipway.monitor.engine import Monitor
from shipway.notify import Outbox, enqueue
from shipway.review.queue import ReviewQueue
from shipway.settings import Settings
from shipway.store import Store
from shipway.store.location import Location, open_manifest


class ServiceParts:
    """Everything about a service that lives in its manifest and its store."""

    def __init__(
        self, manifest: Manifest, location: Location, settings: Settings, store: Store
    ) -> None:
        self.manifest = manifest
        self.name = manifest.service.name
        self.location = location
        self.settings = settings
        self.store = store
        self.metrics = ServiceMetrics(self.name)
        self.registry = Registry(store)
        self.rollout = Rollout(
            store,
            manifest,
            self.registry,
            blocking_alerts=lambda: self.monitor.alerts.firing(("pause_canary", "rollback")),
        )
        self.keys = Keys(store.engine)
        self.review = ReviewQueue(store.engine, self.name, manifest.review, manifest.output)
        self.outbox = Outbox(store.engine, self.name, metrics=self.metrics)
        self.monitor = Monitor(
            store,
            manifest,
            champion=self.champion_version,
            actions={
                **alert_actions(self.rollout, after=self.refresh),
                "review": self.review.alert_action,
                "retrain": self.retrain_action,
            },
            metrics=self.metrics,
            review_figures=self.review.window_figures,
        )

    @classmethod
    def open(cls, path: str | Path, settings: Settings | None = None) -> ServiceParts:
        settings = settings or Settings()
        manifest, location, store = open_manifest(path, settings)
        try:
            return cls(manifest, location, settings, store)
        except (NotFound, ModelError):
            store.close()
            raise

    def close(self) -> None:
        self.outbox.close()
        self.store.close()

    def __enter__(self) -> ServiceParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a running server refines -------------------------------------------------------

    def champion_version(self) -> int:
        """The version that answers now (a server knows it from its router)."""
        return self.rollout.state().champion

    def refresh(self) -> bool:
        """Apply the stored rollout plan now (a server swaps its router; here: nothing)."""
        return False

    # -- operations every face offers ---------------------------------------------------------

    def retrain(
        self, trigger: str, actor: str, *, wait: bool = True, on_progress: Any = None
    ) -> dict[str, Any]:
        """Start a retrain job in a process of its own (see ``lifecycle/training.py``); with
        ``wait``, return its record once it has ended, else at once (a thread records how it
        ends). Conflict if one is under way; InputError if the manifest has no training."""
        import threading

        from shipway.lifecycle import training

        if self.manifest.training is None:
            raise InputError(
                "the manifest has no training: section; add one (fit, last, promote, ...) to "
                "retrain (see the manifest reference)"
            )
        engine = self.store.engine
        job_id = training.start_job(engine, self.name, trigger, actor)
        audit.record(engine, actor=actor, action="retrain.start", target=f"job:{job_id}",
                     service=self.name, after={"trigger": trigger})  # fmt: skip
        try:
            proc = training.launch(self.location.manifest_path, job_id)
        except OSError as exc:
            training.finish(engine, job_id, "failed", error=f"could not start the job: {exc}")
            raise
        hooks = self.manifest.monitor.webhooks
        if wait:
            return training.wait(engine, job_id, proc, on_progress, hooks)
        threading.Thread(
            target=training.wait, args=(engine, job_id, proc, None, hooks),
            name=f"shipway-retrain-{job_id}", daemon=True,
        ).start()  # fmt: skip
        return training.get_job(engine, job_id)

    def retrain_action(self, reason: str) -> str:
        """The ``retrain`` alert action: a job started in the background."""
        from shipway.errors import Conflict
        from shipway.govern.roles import system_actor

        if self.manifest.training is None:
            return "not run: the manifest has no training: section"
        try:
            job = self.retrain(reason[:64], system_actor("monitor"), wait=False)
        except Conflict as exc:
            return exc.message
        return f"retrain job {job['id']} started"

    def key_join(self, within_s: float | None = None) -> labels.KeyJoin:
        """How labels given by key find their decision here (see ``decisions/labels.py``)."""
        field = self.manifest.contract.key_field
        since = time.time() - (labels.KEY_WINDOW_S if within_s is None else within_s)
        treatment = self.manifest.pii.get(field) if field is not None else None
        if treatment in ("drop", "mask"):
            return labels.KeyJoin(
                field,
                since=since,
                refused=f"the log keeps {field} {(treatment == 'drop' and 'dropped') or 'masked'} "
                "(pii); only the hash treatment keeps values that can be joined",
            )
        treat = None
        if treatment == "hash":
            assert field is not None
            treat = Redactor({field: "hash"}, self.settings.secret()).keyed_hash
        return labels.KeyJoin(field, treat=treat, since=since)

    def record_feedback(
        self,
        items: list[Any],
        principal: Principal,
        *,
        source: str = "api",
        within_s: float | None = None,
        skip_unmatched: bool = False,
    ) -> list[dict[str, Any]]:
        """Labels for logged decisions (every item checked; nothing stored if one is bad).

        A principal that may label (labeler, reviewer, admin) labels any decision; one that
        may only predict labels the decisions its own requests made, at the lowest rank.
        Items may name their decision by ``id`` or by ``key`` (the contract's id field)."""
        labeler = principal.can(LABEL)
        return labels.record_feedback(
            self.store.engine,
            self.name,
            self.manifest.output,
            items,
            actor=principal.actor,
            source=source,
            rank=labels.RANK_LABELER if labeler else labels.RANK_CALLER,
            role=",".join(sorted(principal.roles)) or None,
            owner=None if labeler else principal.actor,
            # the join needs the secret for a hashed id: only build it when keys are given
            join=self.key_join(within_s)
            if any(isinstance(it, dict) and "key" in it for it in items)
            else None,
            skip_unmatched=skip_unmatched,
        )

    def purge(self, actor: str) -> dict[str, Any]:
        """Remove what is past the manifest's retention, with its audit event."""
        return purge(self.store.engine, self.name, self.manifest.retention, actor=actor)

    @property
    def checkpoint_dir(self) -> Path:
        """Where signed audit checkpoints are written (manifest.audit.checkpoint_dir)."""
        return (self.location.manifest_path.parent / self.manifest.audit.checkpoint_dir).resolve()

    def write_checkpoint(self, key: bytes) -> Path:
        """A signed checkpoint of the audit chain in :attr:`checkpoint_dir` (and to the
        checkpoint webhook, through the outbox)."""
        path = audit.write_checkpoint(self.store.engine, key, self.checkpoint_dir)
        hook = self.manifest.audit.checkpoint_webhook
        if hook is not None:
            with self.store.engine.begin() as conn:
                enqueue(conn, self.name, "audit.checkpoint", hook, orjson.loads(path.read_bytes()))
        return path

    def verify_audit(self, key: bytes | None) -> dict[str, Any]:
        """The whole chain checked, and the newest checkpoint found held against it."""
        res = audit.verify(self.store.engine).to_dict()
        found = audit.newest_checkpoint(self.checkpoint_dir)
        if found is None:
            res["checkpoint"] = {"checked": False, "why": f"no checkpoint in {self.checkpoint_dir}"}
        elif key is None:
            res["checkpoint"] = {"checked": False, "why": "no server secret to check it with"}
        else:
            path, cp = found
            check = audit.check_checkpoint(self.store.engine, key, cp)
            res["checkpoint"] = {
                "checked": True,
                "file": path.name,
                "seq": cp.get("seq"),
                **check.to_dict(),
            }
            if not check.ok:
                res["ok"] = False
                res["problem"] = res["problem"] or f"checkpoint {path.name}: {check.problem}"
        return res

    def sweep_reviews(self) -> list[dict[str, Any]]:
        """Escalate review items past their SLA, each once, with an alert in the same
        transaction (its notification is queued in the outbox)."""
        alerts = self.monitor.alerts

        def late(conn: Any, item: dict[str, Any]) -> None:
            alerts.raise_in(
                conn,
                f"review-sla-{item['queue']}",
                {
                    "item": item["id"],
                    "decision_id": item["decision_id"],
                    "queue": item["queue"],
                    "due_at": item["due_at"],
                    "summary": "a review item is past its SLA",
                },
            )

        return self.review.sweep(on_late=late)


__all__ = ["ServiceParts"]

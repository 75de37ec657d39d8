"""Composition, without models: a service's parts opened from its manifest.

``ServiceParts.open(manifest)`` gives the manifest, the store and every domain part that works
on stored state (registry, rollout plan, review queue, monitor, notification outbox, keys),
wired the one way Shipway wires them, without loading a model. The CLI and the HTTP control
routes use it; :class:`shipway.service.Service` adds the serving runtime (model lanes, the
predict path, authentication, the scheduler's tasks) on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipway.decisions import labels
from shipway.errors import ModelError, NotFound
from shipway.govern.keys import Keys
from shipway.govern.retention import purge
from shipway.lifecycle.rollout import Rollout, alert_actions
from shipway.manifest import Manifest
from shipway.metrics import ServiceMetrics
from shipway.models import Registry
from shipway.monitor.engine import Monitor
from shipway.notify import Outbox
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
        self.rollout = Rollout(store, manifest, self.registry)
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

    def record_feedback(
        self, items: list[Any], *, actor: str, source: str = "api"
    ) -> list[dict[str, Any]]:
        """Labels for logged decisions (every item checked; nothing stored if one is bad)."""
        return labels.record_feedback(
            self.store.engine, self.name, self.manifest.output, items, actor=actor, source=source
        )

    def purge(self, actor: str) -> dict[str, Any]:
        """Remove what is past the manifest's retention, with its audit event."""
        return purge(self.store.engine, self.name, self.manifest.retention, actor=actor)

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

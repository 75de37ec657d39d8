"""Composition: builds a running :class:`Service` from a manifest and settings.

This is the one place that wires parts together. The CLI, the HTTP app and the tests all get
a Service the same way: ``Service.open(path_to_manifest, settings)``.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shipway.contract import Contract
from shipway.decisions import DecisionLog, get_decision
from shipway.errors import ModelError, NotFound
from shipway.manifest import Manifest, load_manifest
from shipway.metrics import ServiceMetrics
from shipway.models import ModelVersion, Predictor, Registry, SklearnPredictor
from shipway.serving.predict import PredictPath
from shipway.serving.router import Lane, Router
from shipway.settings import Settings
from shipway.store import Store, open_store

log = logging.getLogger("shipway")


@dataclass(frozen=True)
class Location:
    """Where a service keeps its state, derived from the manifest's folder and settings."""

    manifest_path: Path
    storage_dir: Path
    database_url: str
    artifacts_dir: Path

    @classmethod
    def of(cls, manifest: Manifest, manifest_path: Path, settings: Settings) -> Location:
        storage = (manifest_path.parent / manifest.storage.path).resolve()
        url = (
            settings.database_url.get_secret_value()
            if settings.database_url is not None
            else f"sqlite:///{storage / 'shipway.db'}"
        )
        return cls(manifest_path, storage, url, storage / "artifacts")


def open_service_store(location: Location, manifest: Manifest | None = None) -> Store:
    sync = manifest.serving.decision_log.sync if manifest is not None else "normal"
    return open_store(location.database_url, location.artifacts_dir, sqlite_sync=sync)


def reference_rows(store: Store, mv: ModelVersion, names: list[str], n: int = 64) -> list[Any]:
    """A few rows of the version's reference data, in contract order (for load-time probes)."""
    if not mv.reference_sha256:
        return []
    import io

    data = store.artifacts.read_verified(mv.reference_sha256)
    table = pq.read_table(io.BytesIO(data), columns=names).slice(0, n)
    cols = [table.column(c).to_pylist() for c in names]
    return list(zip(*cols, strict=True))


def load_predictor(
    store: Store, registry: Registry, mv: ModelVersion, manifest: Manifest
) -> Predictor:
    predictor = registry.load(mv, manifest.contract)
    if isinstance(predictor, SklearnPredictor):
        names = [f.name for f in manifest.contract.inputs]
        predictor.probe(reference_rows(store, mv, names))
    return predictor


class Service:
    """A manifest brought to life: store, contract, model, decision log, metrics."""

    def __init__(
        self,
        manifest: Manifest,
        location: Location,
        settings: Settings,
        store: Store,
        registry: Registry,
        champion: ModelVersion,
        predictor: Predictor,
    ) -> None:
        self.manifest = manifest
        self.name = manifest.service.name
        self.location = location
        self.settings = settings
        self.store = store
        self.registry = registry
        self.champion = champion
        self.contract = Contract(manifest.contract)
        self.metrics = ServiceMetrics(self.name)
        self.log = DecisionLog(store.engine, max_batch=manifest.serving.decision_log.max_batch)
        self.router = Router(Lane("champion", champion.version, predictor, self.metrics))
        self.predict_path = PredictPath(
            service=self.name,
            contract=self.contract,
            router=self.router,
            log=self.log,
            metrics=self.metrics,
            max_batch_rows=manifest.serving.max_batch_rows,
        )
        self.started = False

    @classmethod
    def open(cls, path: str | Path, settings: Settings | None = None) -> Service:
        settings = settings or Settings()
        manifest_path = Path(path)
        if manifest_path.is_dir():
            manifest_path = manifest_path / "shipway.yaml"
        manifest = load_manifest(manifest_path)
        location = Location.of(manifest, manifest_path.resolve(), settings)
        store = open_service_store(location, manifest)
        try:
            registry = Registry(store)
            mv = registry.get(manifest.service.name, manifest.model.version)
            if mv.contract_sha256 != manifest.contract.digest():
                log.warning(
                    "the manifest's contract differs from the one model version %s was checked "
                    "against (edited since init?)",
                    mv.version,
                )
            predictor = load_predictor(store, registry, mv, manifest)
        except (NotFound, ModelError):
            store.close()
            raise
        return cls(manifest, location, settings, store, registry, mv, predictor)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.started:
            return
        self.log.start()
        for lane in self.router.lanes():
            lane.start()
        self.metrics.model_loaded.set(1)
        # Everything loaded so far lives as long as the process: keep it out of GC scans.
        gc.collect()
        gc.freeze()
        self.started = True

    def stop(self) -> None:
        """Finish in-flight model calls and commit every queued decision, then close."""
        for lane in self.router.lanes():
            lane.stop()
        self.log.stop()
        self.metrics.model_loaded.set(0)
        self.store.close()
        self.started = False

    # -- the faces call these ----------------------------------------------------------------

    async def predict(self, payload: Any, caller: str | None = None) -> dict[str, Any]:
        return await self.predict_path.run(payload, caller)

    def readiness(self) -> dict[str, Any]:
        store_ok = self.store.ping()
        checks = {
            "model_loaded": self.started,
            "store_reachable": store_ok,
        }
        return {
            "ready": all(checks.values()),
            "checks": checks,
            "service": self.name,
            "model_version": self.champion.version,
        }

    def decision(self, decision_id: str) -> dict[str, Any]:
        d = get_decision(self.store.engine, decision_id)
        if d is None:
            raise NotFound(f"no decision with id {decision_id!r}")
        return d

    def describe(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "description": self.manifest.service.description,
            "owner": self.manifest.service.owner.model_dump(),
            "champion": {
                "version": self.champion.version,
                "flavor": self.champion.flavor,
                "uri": self.champion.uri,
                "metrics": self.champion.metrics,
            },
            "contract": self.manifest.contract.model_dump(mode="json", exclude_none=True),
            "output": self.manifest.output.model_dump(mode="json", exclude_none=True),
        }


__all__ = ["Location", "Service", "open_service_store"]

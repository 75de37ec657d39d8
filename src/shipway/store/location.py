"""Where a service keeps its state: derived from the manifest's folder and the settings.

Every command that reads or writes a service's state (``init``, ``serve``, the CLI's moves)
finds its store here, the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shipway.manifest import Manifest, load_manifest
from shipway.settings import Settings
from shipway.store.engine import Store, open_store


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


def open_manifest(
    path: str | Path, settings: Settings | None = None
) -> tuple[Manifest, Location, Store]:
    """Load a manifest and open its store (what every command that reads state needs)."""
    settings = settings or Settings()
    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "shipway.yaml"
    manifest = load_manifest(manifest_path)
    location = Location.of(manifest, manifest_path.resolve(), settings)
    return manifest, location, open_service_store(location, manifest)


__all__ = ["Location", "open_manifest", "open_service_store"]

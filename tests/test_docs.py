"""Generated reference docs match the code, and the public API is what it says."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import shipway
from shipway.docgen import targets

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_are_current() -> None:
    for path, text in targets(ROOT).items():
        assert path.exists(), f"{path} is missing: run python -m shipway.docgen"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python -m shipway.docgen"
        )


def test_public_api() -> None:
    assert sorted(shipway.__all__) == sorted(
        [
            "Contract",
            "Manifest",
            "Service",
            "Settings",
            "ShipwayError",
            "create_app",
            "init_service",
            "load_manifest",
            "__version__",
        ]
    )
    from shipway.api.app import create_app
    from shipway.contract import Contract
    from shipway.errors import ShipwayError
    from shipway.lifecycle.onboard import init_service
    from shipway.manifest import Manifest, load_manifest
    from shipway.service import Service
    from shipway.settings import Settings

    homes = {
        "Contract": Contract,
        "Manifest": Manifest,
        "Service": Service,
        "Settings": Settings,
        "ShipwayError": ShipwayError,
        "create_app": create_app,
        "init_service": init_service,
        "load_manifest": load_manifest,
    }
    for name, obj in homes.items():
        assert getattr(shipway, name) is obj, name
    assert shipway.__version__ == importlib.metadata.version("shipway")

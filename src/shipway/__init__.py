"""Shipway: take an AI pilot to production.

The names below are the public API; everything else may change between releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Contract",
    "Manifest",
    "Service",
    "Settings",
    "ShipwayError",
    "__version__",
    "create_app",
    "init_service",
    "load_manifest",
]

_LAZY = {
    "Contract": "shipway.contract",
    "Manifest": "shipway.manifest",
    "load_manifest": "shipway.manifest",
    "Service": "shipway.service",
    "Settings": "shipway.settings",
    "ShipwayError": "shipway.errors",
    "create_app": "shipway.api",
    "init_service": "shipway.lifecycle.onboard",
}

if TYPE_CHECKING:
    from shipway.api import create_app
    from shipway.contract import Contract
    from shipway.errors import ShipwayError
    from shipway.lifecycle.onboard import init_service
    from shipway.manifest import Manifest, load_manifest
    from shipway.service import Service
    from shipway.settings import Settings


def __getattr__(name: str) -> Any:
    # Imported on first use so that `shipway --help` stays quick.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shipway' has no attribute {name!r}")

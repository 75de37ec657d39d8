"""Generated reference docs match the code, and the public API is what it says."""

from __future__ import annotations

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
        ["Contract", "Manifest", "Service", "Settings", "ShipwayError", "create_app",
         "init_service", "load_manifest", "__version__"]
    )
    for name in shipway.__all__:
        assert getattr(shipway, name) is not None

"""A pilot whose inputs hold personal data (email, phone, name), for redaction tests."""

from __future__ import annotations

from typing import Any


def predict(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"output": "high" if r["amount"] > 500 else "low", "confidence": 0.9} for r in rows]


def leaky(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fails quoting its inputs, as scikit-learn's "Found unknown categories [...]" does."""
    seen = [(r["email"], r["phone"], r["name"]) for r in rows]
    raise ValueError(f"Found unknown categories {seen} during transform")

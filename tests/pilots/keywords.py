"""A keyword-rules fallback for the review pilot: a label when a telling word appears, and no
answer (None) otherwise, so the row goes on to the next fallback step."""

from __future__ import annotations

from typing import Any

from tests.upstream_server import NEGATIVE, POSITIVE


def predict(rows: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for r in rows:
        words = set(str(r["text"]).lower().split())
        if words & set(POSITIVE):
            out.append("positive")
        elif words & set(NEGATIVE):
            out.append("negative")
        else:
            out.append(None)
    return out

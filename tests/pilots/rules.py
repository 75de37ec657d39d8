"""A pilot written as a plain Python function (``python:tests.pilots.rules:predict``)."""

from __future__ import annotations

from typing import Any


def predict(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flags large tumours: a hand-written rule, as many pilots begin."""
    out = []
    for r in rows:
        big = r["mean radius"] > 15.0
        out.append({"output": 0 if big else 1, "confidence": 0.8 if big else 0.6})
    return out


def broken(rows: list[dict[str, Any]]) -> list[Any]:
    raise ValueError("this pilot always fails")


def fragile(rows: list[dict[str, Any]]) -> list[Any]:
    """Fails on very large tumours, like a pilot that was never tested on them."""
    if any(r["mean radius"] > 25 for r in rows):
        raise ZeroDivisionError("division by zero")
    return predict(rows)


def sleepy(rows: list[dict[str, Any]]) -> list[Any]:
    """A shadow candidate that answers, but far too slowly."""
    import time

    time.sleep(2.0)
    return predict(rows)


def explodes(rows: list[dict[str, Any]]) -> list[Any]:
    """A shadow candidate that always fails."""
    raise RuntimeError("shadow model exploded")


def lagging(rows: list[dict[str, Any]]) -> list[Any]:
    """A shadow candidate that answers in a tenth of a second: calls are in flight often."""
    import time

    time.sleep(0.1)
    return predict(rows)

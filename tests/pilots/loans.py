"""A loan pilot with numeric and categorical inputs, written as a rule (for monitor tests)."""

from __future__ import annotations

from typing import Any

import numpy as np


def predict(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        score = r["amount"] / 1000.0 - 0.02 * r["age"] + (0.5 if r["region"] == "north" else 0.0)
        deny = score > 2.0
        out.append(
            {
                "output": "deny" if deny else "approve",
                "confidence": float(min(0.99, 0.55 + abs(score - 2.0) / 4)),
            }
        )
    return out


REGIONS = ["north", "south", "east", "west"]
CHANNELS = ["web", "branch", "phone"]


def generate(n: int, seed: int, shifted: bool = False) -> list[dict[str, Any]]:
    """Applications; ``shifted`` moves amount up by 30% and sends more from the north."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(7.6, 0.4, n) * (1.3 if shifted else 1.0)
    age = rng.integers(21, 70, n)
    p_region = [0.55, 0.15, 0.15, 0.15] if shifted else [0.25, 0.25, 0.25, 0.25]
    region = rng.choice(REGIONS, n, p=p_region)
    channel = rng.choice(CHANNELS, n, p=[0.5, 0.3, 0.2])
    return [
        {"amount": round(float(a), 2), "age": int(g), "region": str(r), "channel": str(c)}
        for a, g, r, c in zip(amount, age, region, channel, strict=True)
    ]

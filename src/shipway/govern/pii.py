"""Personal data in the decision log: each listed input field dropped, masked or hashed.

The model always sees the clear value; what is stored (and so exported) never holds it.
``hash`` is a keyed HMAC-SHA256 (the server secret), so equal values still join.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any


def _mask(v: Any) -> Any:
    if v is None:
        return None
    s = str(v)
    keep = 4 if len(s) > 8 else max(0, len(s) // 4)
    return "*" * (len(s) - keep) + s[len(s) - keep :]


class Redactor:
    def __init__(self, treatments: Mapping[str, str], key: bytes) -> None:
        self.drop = [f for f, t in treatments.items() if t == "drop"]
        self.mask = [f for f, t in treatments.items() if t == "mask"]
        self.hash = [f for f, t in treatments.items() if t == "hash"]
        self._key = key

    def __bool__(self) -> bool:
        return bool(self.drop or self.mask or self.hash)

    def keyed_hash(self, v: Any) -> str | None:
        if v is None:
            return None
        return "hmac:" + hmac.new(self._key, str(v).encode(), hashlib.sha256).hexdigest()[:32]

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        for f in self.drop:
            inputs.pop(f, None)
        for f in self.mask:
            if f in inputs:
                inputs[f] = _mask(inputs[f])
        for f in self.hash:
            if f in inputs:
                inputs[f] = self.keyed_hash(inputs[f])
        return inputs


__all__ = ["Redactor"]

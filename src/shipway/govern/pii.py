"""Personal data in the decision log: each listed input field dropped, masked or hashed.

The model always sees the clear value; what is stored (and so exported) never holds it.
``hash`` is a keyed HMAC-SHA256 (the server secret), so equal values still join.

Error text is treated too: a model's error message may quote its inputs (scikit-learn's
"Found unknown categories ['...']", an HTTP model's error body), so before any error or
fallback reason is stored, shown or returned, :meth:`Redactor.scrub` replaces every raw value
of a personal field that the failing rows held with its treated form.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

#: What a dropped field's value becomes where it appears in error text.
DROPPED = "[redacted]"


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
        self.treatments = dict(treatments)
        self._key = key

    def __bool__(self) -> bool:
        return bool(self.drop or self.mask or self.hash)

    def keyed_hash(self, v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # 42.0 sent for an int field is the same value as 42
        return "hmac:" + hmac.new(self._key, str(v).encode(), hashlib.sha256).hexdigest()[:32]

    def treated(self, field: str, v: Any) -> Any:
        """One value as the log holds it (None for a dropped field)."""
        if field in self.drop:
            return None
        if field in self.mask:
            return _mask(v)
        if field in self.hash:
            return self.keyed_hash(v)
        return v

    def scrub(self, text: str, rows: Iterable[Mapping[str, Any]]) -> str:
        """``text`` with every raw value of a personal field in ``rows`` replaced by its
        treated form (longest first, so a value inside another is not half replaced)."""
        if not text or not self:
            return text
        subs: dict[str, str] = {}
        for row in rows:
            for f in (*self.drop, *self.mask, *self.hash):
                v = row.get(f)
                if v is None or str(v) == "":
                    continue
                t = self.treated(f, v)
                subs[str(v)] = DROPPED if t is None else str(t)
        for raw in sorted(subs, key=len, reverse=True):
            text = text.replace(raw, subs[raw])
        return text

    def treat_reference(self, reference: dict[str, Any]) -> dict[str, Any] | None:
        """A model version's reference statistics with personal fields treated as the log
        treats them: dropped fields lose their statistics, masked and hashed ones have their
        value counts keyed by the treated value. None when there was nothing to treat."""
        inputs = reference.get("inputs")
        done = reference.get("pii") or {}
        if not isinstance(inputs, dict):
            return None
        todo = {f: t for f, t in self.treatments.items() if f in inputs and done.get(f) != t}
        if not todo:
            return None
        treated = {k: v for k, v in inputs.items()}
        for f in todo:
            stats = dict(treated[f])
            if f in self.drop:
                treated[f] = {"dropped": True}
                continue
            freq = stats.get("frequencies")
            if isinstance(freq, dict):
                merged: dict[str, int] = {}
                for value, count in freq.items():
                    key = str(self.treated(f, value))
                    merged[key] = merged.get(key, 0) + int(count)
                stats["frequencies"] = merged
            treated[f] = stats
        return {**reference, "inputs": treated, "pii": {**done, **todo}}

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


__all__ = ["DROPPED", "Redactor"]

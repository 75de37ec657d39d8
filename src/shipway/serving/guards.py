"""Guards around a model call: circuit breaker, output checks, retry backoff, answer cache.

The predict path applies them in this order: timeout, retry (only for errors that are safe to
retry), circuit breaker, output checks, then the manifest's fallback chain. Everything here is
plain, synchronous and cheap: on the happy path a guarded call costs a breaker check, a
deadline and a vectorised output check.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from shipway.errors import ModelTimeout, OutputInvalid, UpstreamError
from shipway.manifest import BreakerSpec, OutputCheckSpec, OutputSpec
from shipway.models.predictor import Predictions

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
BREAKER_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class Breaker:
    """Opens after ``failures`` failures within ``window_s``; after ``cooldown_s`` one trial
    call is let through (half-open): its success closes the breaker, its failure reopens it.

    Thread-safe; ``clock`` is injectable for tests of the state machine itself.
    """

    def __init__(self, spec: BreakerSpec, clock: Any = time.monotonic) -> None:
        self.threshold = spec.failures
        self.window = spec.window_s
        self.cooldown = spec.cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: list[float] = []
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial = False

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go to the model now? (A half-open breaker lets one trial through.)"""
        if self.threshold <= 0:
            return True
        if self._state == CLOSED:  # the common case, without the lock
            return True
        with self._lock:
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.cooldown:
                    return False
                self._state = HALF_OPEN
                self._trial = False
            if self._state == HALF_OPEN:
                if self._trial:
                    return False
                self._trial = True
                return True
            return True

    def success(self) -> None:
        if self.threshold <= 0 or (self._state == CLOSED and not self._failures):
            return
        with self._lock:
            if self._state == HALF_OPEN:
                self._state = CLOSED
                self._failures.clear()
            self._trial = False

    def failure(self) -> bool:
        """Record a failure; True when this failure opened the breaker."""
        if self.threshold <= 0:
            return False
        with self._lock:
            now = self._clock()
            if self._state == HALF_OPEN:
                self._state = OPEN
                self._opened_at = now
                self._trial = False
                return True
            if self._state == OPEN:
                return False
            cutoff = now - self.window
            self._failures = [t for t in self._failures if t > cutoff]
            self._failures.append(now)
            if len(self._failures) >= self.threshold:
                self._state = OPEN
                self._opened_at = now
                self._failures.clear()
                return True
            return False


def is_retryable(exc: BaseException) -> bool:
    """Errors that say nothing about the inputs: a timeout, an unreachable or busy endpoint."""
    if isinstance(exc, ModelTimeout):
        return True
    return isinstance(exc, UpstreamError) and exc.retryable


def backoff_s(attempt: int, base_ms: float, cap_ms: float) -> float:
    """Full jitter: a random wait in [0, min(cap, base * 2**attempt)] milliseconds."""
    return random.uniform(0.0, min(cap_ms, base_ms * (2.0**attempt))) / 1000.0


def _is_number(v: Any) -> bool:
    return type(v) is float or type(v) is int


class OutputCheck:
    """Checks a model's answers against the output spec and the manifest's extra checks."""

    def __init__(self, output: OutputSpec, extra: OutputCheckSpec) -> None:
        self.kind = output.kind
        self.labels = frozenset(output.labels or ()) if output.kind == "classification" else None
        self.lo = extra.min
        self.hi = extra.max
        self._schema = None
        if extra.json_schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(extra.json_schema)
            cls.check_schema(extra.json_schema)
            self._schema = cls(extra.json_schema)

    def row_problem(self, o: Any, c: Any) -> str | None:
        """Why one answer fails the checks, or None."""
        labels = self.labels
        if labels is not None:
            try:
                known = o in labels
            except TypeError:  # an unhashable answer (a list, a dict)
                known = False
            if not known:
                return f"answer {o!r} is not one of {sorted(labels, key=str)}"
        elif self.kind == "regression" and self._schema is None:
            lo, hi = self.lo, self.hi
            if not _is_number(o) or not math.isfinite(o):
                return f"answer {o!r} is not a finite number"
            if (lo is not None and o < lo) or (hi is not None and o > hi):
                return f"answer {o} is outside [{lo}, {hi}]"
        if self._schema is not None:
            err = next(iter(self._schema.iter_errors(o)), None)
            if err is not None:
                return f"answer does not satisfy the output schema: {err.message}"
        if c is not None and not (isinstance(c, int | float) and 0.0 <= c <= 1.0):
            return f"confidence {c!r} is not within [0, 1]"
        return None

    def problem(self, pred: Predictions, n: int) -> str | None:
        """None when every answer passes; else a sentence naming the first bad answer."""
        if len(pred.outputs) != n or len(pred.confidence) != n:
            return f"the model returned {len(pred.outputs)} answers for {n} rows"
        for k, why in enumerate(self.row_problems(pred)):
            if why is not None:
                return f"row {k}: {why}"
        return None

    def row_problems(self, pred: Predictions) -> list[str | None]:
        """Per row, why its answer cannot be used (the model's own reason first)."""
        given = pred.invalid
        return [
            given[k] if given is not None and given[k] else self.row_problem(o, c)
            for k, (o, c) in enumerate(zip(pred.outputs, pred.confidence, strict=True))
        ]

    def mark(self, pred: Predictions, n: int) -> Predictions | OutputInvalid:
        """``pred`` with each bad answer marked (``invalid``), so that only those rows fall
        back; a wrong number of answers fails the whole call."""
        if len(pred.outputs) != n or len(pred.confidence) != n:
            return OutputInvalid(
                f"invalid model answer: the model returned {len(pred.outputs)} answers for {n} rows"
            )
        problems = self.row_problems(pred)
        if not any(problems):
            return pred if pred.invalid is None else dataclasses.replace(pred, invalid=None)
        return dataclasses.replace(pred, invalid=problems)

    def check(self, pred: Predictions, n: int) -> OutputInvalid | None:
        msg = self.problem(pred, n)
        return OutputInvalid(f"invalid model answer: {msg}") if msg else None

    def check_default(self, output: Any, confidence: Any) -> None:
        """A declared default answer must pass the same checks (raised at startup)."""
        err = self.check(Predictions([output], [confidence]), 1)
        if err is not None:
            raise err


class AnswerCache:
    """Recent good answers by validated inputs: an LRU bounded by ``max_entries``.

    Used for the response cache (same inputs, same version, younger than the TTL) and for
    the ``cache`` fallback step (same inputs, any version, younger than the step's max age).
    Only touched on the event loop thread, so it needs no lock.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[Hashable, tuple[Any, Any, int | None, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def put_many(
        self,
        keys: Sequence[Hashable],
        outputs: Sequence[Any],
        confidence: Sequence[Any],
        version: int | None,
    ) -> None:
        d = self._d
        now = time.monotonic()
        for key, o, c in zip(keys, outputs, confidence, strict=True):
            try:
                d[key] = (o, c, version, now)
                d.move_to_end(key)
            except TypeError:  # an unhashable value (never for contract scalars)
                continue
        while len(d) > self.max_entries:
            d.popitem(last=False)

    def get(
        self, key: Hashable, max_age_s: float, version: int | None = None
    ) -> tuple[Any, Any, int | None] | None:
        try:
            hit = self._d.get(key)
        except TypeError:
            return None
        if hit is None:
            return None
        o, c, v, at = hit
        if time.monotonic() - at > max_age_s or (version is not None and v != version):
            return None
        return o, c, v


__all__ = [
    "BREAKER_CODES",
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "AnswerCache",
    "Breaker",
    "OutputCheck",
    "backoff_s",
    "is_retryable",
]

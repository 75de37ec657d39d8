"""What callers may ask: per-caller token buckets (429) and a bound on work in flight (503).

Both live in the process (one event loop thread touches them, so they need no lock). With
several replicas each enforces its own share; a shared backend can replace them later.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping

from shipway.errors import Overloaded, RateLimited
from shipway.manifest import LimitsSpec, RateLimitSpec

#: Callers remembered at most; the least recently seen are forgotten first (a forgotten caller
#: starts again with a full bucket, which only ever errs towards letting a request through).
MAX_CALLERS = 100_000


class TokenBuckets:
    """One bucket per caller key: ``per_second`` tokens a second, at most ``burst`` stored."""

    def __init__(self, spec: RateLimitSpec, clock: object = time.monotonic) -> None:
        self.rate = spec.per_second
        self.burst = float(spec.burst)
        self.header = spec.key.split(":", 1)[1].strip().lower() if spec.key != "client" else None
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def key_of(
        self, client: str | None, headers: Mapping[str, str] | None, who: str | None = None
    ) -> str:
        if who is not None:  # an authenticated caller: its API key or token subject
            return "p:" + who
        if self.header is not None and headers is not None:
            v = headers.get(self.header)
            if v:
                return "h:" + v
        return "c:" + (client or "unknown")

    def take(self, key: str) -> None:
        """Spend one token or raise :class:`RateLimited` with the wait until the next one."""
        now = self._clock()  # type: ignore[operator]
        b = self._buckets.get(key)
        if b is None:
            tokens = self.burst
            if len(self._buckets) >= MAX_CALLERS:
                self._buckets.popitem(last=False)
        else:
            tokens, last = b
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            self._buckets.move_to_end(key)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(
                f"rate limit reached: {self.rate:g} requests/s with bursts of {self.burst:g} "
                f"per caller; retry in {wait:.2f} s",
                retry_after=wait,
            )
        self._buckets[key] = (tokens - 1.0, now)


class Gate:
    """Admission for the predict path: the caller's rate limit, then the in-flight bound."""

    def __init__(self, spec: LimitsSpec) -> None:
        self.buckets = TokenBuckets(spec.rate) if spec.rate is not None else None
        self.max_in_flight = spec.max_in_flight
        self.in_flight = 0

    def enter(
        self, client: str | None, headers: Mapping[str, str] | None, who: str | None = None
    ) -> None:
        """Admit one request (pair with :meth:`leave`) or raise RateLimited / Overloaded."""
        if self.buckets is not None:
            self.buckets.take(self.buckets.key_of(client, headers, who))
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"the service is at its limit of {self.max_in_flight} requests in flight "
                "(serving.limits.max_in_flight); retry shortly",
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


__all__ = ["MAX_CALLERS", "Gate", "TokenBuckets"]

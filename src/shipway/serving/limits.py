"""What callers may ask: token buckets per caller key (429) and a bound on work in flight (503).

A service may declare several rate limits, each with its own key (who a caller is: the
principal, the client address, or a request header such as a tenant id) and rate; a request
must fit every one, and a refusal names the limit that ran out. The ingress works out each
request's keys (``api/ingress.py``); the buckets live in the process (one event loop thread
touches them, so they need no lock). With several replicas each enforces its own share.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from shipway.errors import Overloaded, RateLimited
from shipway.manifest import LimitsSpec, RateLimitSpec

#: Callers remembered at most per limit; the least recently seen are forgotten first (a
#: forgotten caller starts again with a full bucket, which only errs towards letting a
#: request through).
MAX_CALLERS = 100_000


class TokenBuckets:
    """One bucket per key: ``per_second`` tokens a second, at most ``burst`` stored."""

    def __init__(self, spec: RateLimitSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.rate = spec.per_second
        self.burst = float(spec.burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def tokens(self, key: str, now: float) -> float:
        """Tokens the key has now (without spending)."""
        b = self._buckets.get(key)
        if b is None:
            return self.burst
        tokens, last = b
        return min(self.burst, tokens + (now - last) * self.rate)

    def spend(self, key: str, tokens: float, now: float) -> None:
        if key in self._buckets:
            self._buckets.move_to_end(key)
        elif len(self._buckets) >= MAX_CALLERS:
            self._buckets.popitem(last=False)
        self._buckets[key] = (tokens - 1.0, now)

    def refusal(self, tokens: float) -> RateLimited:
        wait = (1.0 - tokens) / self.rate
        return RateLimited(
            f"rate limit reached for {self.spec.key}: {self.rate:g} requests/s with bursts of "
            f"{self.burst:g}; retry in {wait:.2f} s",
            retry_after=wait,
            limit=self.spec.key,
        )

    def take(self, key: str) -> None:
        """Spend one token or raise :class:`RateLimited` with the wait until the next one."""
        now = self._clock()
        t = self.tokens(key, now)
        if t < 1.0:
            raise self.refusal(t)
        self.spend(key, t, now)


class Gate:
    """Admission for requests that carry rows: every rate limit, then the in-flight bound."""

    def __init__(self, spec: LimitsSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = [TokenBuckets(r, clock) for r in spec.rates]
        self.keys = [r.key for r in spec.rates]
        self.max_in_flight = spec.max_in_flight
        self.in_flight = 0
        self._clock = clock

    def enter(self, keys: Sequence[str]) -> None:
        """Admit one request (pair with :meth:`leave`) or raise RateLimited / Overloaded.

        ``keys[i]`` is the caller's key for the i-th limit. A request refused by one limit
        spends nothing from the others.
        """
        if self.limits:
            now = self._clock()
            have = []
            for buckets, key in zip(self.limits, keys, strict=True):
                t = buckets.tokens(key, now)
                if t < 1.0:
                    raise buckets.refusal(t)
                have.append(t)
            for buckets, key, t in zip(self.limits, keys, have, strict=True):
                buckets.spend(key, t, now)
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"the service is at its limit of {self.max_in_flight} requests in flight "
                "(serving.limits.max_in_flight); retry shortly",
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


__all__ = ["MAX_CALLERS", "Gate", "TokenBuckets"]

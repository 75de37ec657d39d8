"""A pilot model that takes its time: the churn pipeline behind a fixed delay per call, so a
test can stop a long batch-scoring run part of the way through. Importable, so the ``shipway``
processes a test starts can unpickle it."""

from __future__ import annotations

import time
from typing import Any


class Slow:
    """Delegates to the wrapped estimator, after ``delay_s`` per predict call."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "delay_s"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def predict(self, x: Any) -> Any:
        time.sleep(self.delay_s)
        return self.inner.predict(x)

    def predict_proba(self, x: Any) -> Any:
        time.sleep(self.delay_s)
        return self.inner.predict_proba(x)

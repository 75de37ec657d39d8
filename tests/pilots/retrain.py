"""A pilot whose world changes under it (concept drift), and training functions for the
retrain tests. Importable, so the job processes a test starts can call and unpickle them."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd


def generate(n: int, seed: int, drifted: bool = False) -> pd.DataFrame:
    """Two numbers and a segment; the label follows x1 before the drift and x2 after it."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    segment = rng.choice(["a", "b"], n, p=[0.6, 0.4])
    signal = x2 if drifted else x1
    return pd.DataFrame(
        {
            "x1": x1.round(4),
            "x2": x2.round(4),
            "segment": segment,
            "approved": np.where(signal > 0, "yes", "no"),
        }
    )


def pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = ColumnTransformer(
        [("num", StandardScaler(), ["x1", "x2"]), ("cat", OneHotEncoder(), ["segment"])]
    )
    return make_pipeline(prep, LogisticRegression(max_iter=500))


class WrongOnB:
    """Right everywhere but segment b, where it answers the other class."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = inner.classes_
        self.feature_names_in_ = inner.feature_names_in_

    def predict_proba(self, x: Any) -> Any:
        p = np.asarray(self.inner.predict_proba(x))
        flip = np.asarray(x["segment"] == "b")
        p[flip] = p[flip][:, ::-1]
        return p

    def predict(self, x: Any) -> Any:
        return np.asarray(self.classes_)[self.predict_proba(x).argmax(axis=1)]


def fit_wrong_on_b(frame: pd.DataFrame, contract: Any) -> Any:
    model = pipeline().fit(frame[["x1", "x2", "segment"]], frame["__target__"])
    return WrongOnB(model)


def fit_slowly(frame: pd.DataFrame, contract: Any) -> Any:
    time.sleep(60)
    return pipeline().fit(frame[["x1", "x2", "segment"]], frame["__target__"])


def fit_broken(frame: pd.DataFrame, contract: Any) -> Any:
    raise ValueError("the feature store is unreachable")


def fit_chatty(frame: pd.DataFrame, contract: Any) -> Any:
    """Fits as the pilot did, after writing far more to its output than a pipe holds."""
    import sys

    for k in range(3000):
        print(f"epoch {k}: " + "." * 100, file=sys.stderr)
    return pipeline().fit(frame[["x1", "x2", "segment"]], frame["__target__"])

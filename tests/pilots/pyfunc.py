"""MLflow python models wrapping the pilot pipeline, as teams write them around an estimator.

They live in an importable module so that the ``shipway`` processes the tests start can load
them (MLflow pickles a python model by reference to its class).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd


class LabelsOnly(mlflow.pyfunc.PythonModel):
    """Answers labels and nothing else, like most hand-written pyfunc models."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return self.estimator.predict(model_input)


class WithPredictProba(LabelsOnly):
    """Answers labels, and offers class probabilities (an array in ``classes_`` order)."""

    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator)
        self.classes_ = list(estimator.classes_)

    def predict_proba(self, context: Any, model_input: pd.DataFrame) -> Any:
        return self.estimator.predict_proba(model_input)


class ProbabilityFrame(LabelsOnly):
    """Answers a frame with one probability column per label (declared in its signature)."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        proba = self.estimator.predict_proba(model_input)
        return pd.DataFrame(proba, columns=[str(c) for c in self.estimator.classes_])

"""Models: predictors (the runtime face of a model) and the registry of versions."""

from shipway.models.predictor import FunctionPredictor, Predictions, Predictor, SklearnPredictor
from shipway.models.registry import ModelVersion, Registry

__all__ = [
    "FunctionPredictor",
    "ModelVersion",
    "Predictions",
    "Predictor",
    "Registry",
    "SklearnPredictor",
]

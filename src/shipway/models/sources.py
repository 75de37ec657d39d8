"""Model sources: what a ``--model`` argument names, decided in one place.

``shipway init`` and ``shipway models add`` (and the registry that stores what they register)
take the same sources:

    python:module:function          a Python function (kind ``python``)
    http(s)://host/...              a model served over HTTP (``http``)
    models:/NAME/V, runs:/ID/PATH   an MLflow model in a tracking server (``mlflow``, remote)
    a folder with an MLmodel file   an MLflow model (``mlflow``)
    a file ending in .onnx          an ONNX model (``onnx``)
    any other file                  a scikit-learn estimator saved with joblib (``sklearn``)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipway.errors import InputError
from shipway.models.predictor import (
    FunctionPredictor,
    Predictor,
    SklearnPredictor,
    for_fields,
    import_callable,
    load_sklearn_bytes,
)

KINDS = ("python", "http", "mlflow", "onnx", "sklearn")


@dataclass(frozen=True)
class ModelSource:
    kind: str
    text: str
    path: Path | None = None
    remote: bool = False


def detect(model: str) -> ModelSource:
    """The kind of model ``model`` names; InputError when a named file or folder is missing or
    is a folder that holds no MLflow model."""
    if model.startswith("python:"):
        return ModelSource("python", model)
    if model.startswith(("http://", "https://")):
        return ModelSource("http", model)
    if model.startswith(("models:/", "runs:/")):
        return ModelSource("mlflow", model, remote=True)
    path = Path(model)
    if not path.exists():
        raise InputError(
            f"model {model} does not exist (a file, an MLflow folder, "
            "python:module:function, models:/... or an http(s):// URL)"
        )
    if path.is_dir():
        if not (path / "MLmodel").exists():
            raise InputError(f"{model} is a folder without an MLmodel file")
        return ModelSource("mlflow", model, path)
    if path.suffix.lower() == ".onnx":
        return ModelSource("onnx", model, path)
    return ModelSource("sklearn", model, path)


def open_predictor(
    source: ModelSource,
    fields: Sequence[Any],
    labels: Sequence[Any] | None,
    scratch: Path,
    *,
    endpoint: Any = None,
    timeout_s: float = 30.0,
) -> tuple[Predictor, Any]:
    """A predictor for a source that is not registered yet (``init`` scores its pilot with
    it), given the contract's feature ``fields``, and the loaded estimator for scikit-learn
    files (None otherwise)."""
    obj: list[Any] = [None]

    def make(names: list[str], numeric: bool) -> Predictor:
        if source.kind == "python":
            return FunctionPredictor(import_callable(source.text), names)
        if source.kind == "http":
            from shipway.models.endpoints import endpoint_predictor

            return endpoint_predictor(source.text, endpoint, names, timeout_s, labels)
        if source.kind == "onnx":
            from shipway.models.formats import OnnxPredictor

            assert source.path is not None
            return OnnxPredictor(source.path.read_bytes(), names, labels)
        if source.kind == "mlflow":
            from shipway.models.formats import fetch_mlflow_uri, load_mlflow

            folder = (
                fetch_mlflow_uri(source.text, scratch / "mlflow") if source.remote else source.path
            )
            assert folder is not None
            return load_mlflow(folder, names, labels, numeric)
        assert source.path is not None
        if obj[0] is None:
            obj[0] = load_sklearn_bytes(source.path.read_bytes())
        return SklearnPredictor(obj[0], names, numeric)

    return for_fields(make, fields), obj[0]


__all__ = ["KINDS", "ModelSource", "detect", "open_predictor"]

"""Predictors: the runtime face of a model.

A predictor takes a batch of validated rows (tuples in contract field order) and returns one
output and one confidence per row. Loaders turn a model reference into a predictor:

* ``sklearn`` — a scikit-learn estimator or pipeline saved with joblib, loaded only from the
  artifact store after its sha256 has been checked. A model file is code (pickle): load only
  files from sources you trust.
* ``python:module:function`` — a callable that takes a list of input dicts and returns a list of
  outputs, or a list of ``{"output": ..., "confidence": ...}`` dicts.

A model is given the contract's ``role: feature`` fields, plus any id or metadata field it
names itself (a scikit-learn model fitted on a frame that held them); other ids and metadata
are logged and checked but never reach it. :func:`for_fields` builds that view once, at load.
"""

from __future__ import annotations

import importlib
import io
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from shipway.errors import ModelError

Row = tuple[Any, ...]

# When a model fitted on a DataFrame is handed its native NumPy input, scikit-learn warns on
# every call that the array has no feature names. Shipway orders the columns itself (and checks
# the result against the DataFrame path at load), so the warning is noise on the hot path.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


@dataclass(frozen=True, slots=True)
class Predictions:
    outputs: list[Any]
    confidence: list[float | None]
    cost: list[float] | None = None
    """Money spent per row (model endpoints that bill by token), when known."""
    proba: Any = None
    """Class probabilities when the model gives them: an (n, len(classes)) array in
    ``classes`` order, or one ``{label: p}`` per row. Kept as the model returned them; turned
    into JSON only for a caller who asks."""
    classes: list[Any] | None = None
    invalid: list[str | None] | None = None
    """Per row, why the model's answer cannot be used (a chat answer outside the labels, an
    answer that fails the output checks), or None for a good answer. Such rows go down the
    fallback chain alone; the others keep the model's answers."""
    tokens: list[tuple[int, int]] | None = None
    """Prompt and completion tokens billed per row (chat endpoints)."""

    def take(self, rows: Sequence[int]) -> Predictions:
        """The predictions of ``rows`` (positions in this batch), in that order."""
        cost = [self.cost[k] for k in rows] if self.cost is not None else None
        proba = None
        if self.proba is not None:
            proba = [self.proba[k] for k in rows]
        invalid = [self.invalid[k] for k in rows] if self.invalid is not None else None
        tokens = [self.tokens[k] for k in rows] if self.tokens is not None else None
        return Predictions(
            [self.outputs[k] for k in rows],
            [self.confidence[k] for k in rows],
            cost,
            proba,
            self.classes,
            invalid,
            tokens,
        )


class Predictor(Protocol):
    """Anything that can score a batch of rows."""

    flavor: str

    def predict(self, rows: Sequence[Row]) -> Predictions: ...


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


class SklearnPredictor:
    """A scikit-learn estimator, fed NumPy when it accepts that and a DataFrame otherwise."""

    flavor = "sklearn"

    def __init__(self, model: Any, feature_names: Sequence[str], numeric: bool) -> None:
        if not hasattr(model, "predict"):
            raise ModelError(f"the loaded object ({type(model).__name__}) has no predict method")
        self.model = model
        self.feature_names = list(feature_names)
        self.has_proba = hasattr(model, "predict_proba")
        self.classes = [_py(c) for c in getattr(model, "classes_", [])] or None
        self._numpy_ok = False
        self._order: list[int] | None = None
        fitted = getattr(model, "feature_names_in_", None)
        if fitted is not None:
            missing = [str(f) for f in fitted if str(f) not in self.feature_names]
            if missing:
                raise NeedsFields(missing)
            pos = {n: i for i, n in enumerate(self.feature_names)}
            self._order = [pos[str(f)] for f in fitted]
        self._numeric = numeric

    def probe(self, rows: Sequence[Row]) -> None:
        """Decide whether the model can take NumPy input; it must match the DataFrame path."""
        if not self._numeric or not rows:
            return
        try:
            via_frame = self._call(self._frame(rows))
            via_numpy = self._call(self._array(rows))
        except Exception:
            return
        same = all(a == b for a, b in zip(via_frame.outputs, via_numpy.outputs, strict=True))
        same = same and all(
            (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)
            for a, b in zip(via_frame.confidence, via_numpy.confidence, strict=True)
        )
        self._numpy_ok = same

    @property
    def native_input(self) -> str:
        return "numpy" if self._numpy_ok else "dataframe"

    def _array(self, rows: Sequence[Row]) -> np.ndarray:
        x = np.array(rows, dtype=np.float64)
        if self._order is not None:
            x = x[:, self._order]
        return x

    def _frame(self, rows: Sequence[Row]) -> Any:
        import pandas as pd

        frame = pd.DataFrame.from_records(list(rows), columns=self.feature_names)
        if self._order is not None:
            frame = frame[[self.feature_names[i] for i in self._order]]
        return frame

    def _call(self, x: Any) -> Predictions:
        if self.has_proba and self.classes is not None:
            proba = np.asarray(self.model.predict_proba(x))
            idx = proba.argmax(axis=1)
            classes = self.classes
            outputs = [classes[i] for i in idx.tolist()]
            conf = proba[np.arange(len(idx)), idx].tolist()
            return Predictions(outputs, conf, None, proba, classes)
        out = np.asarray(self.model.predict(x)).tolist()
        return Predictions(out, [None] * len(out))

    def predict(self, rows: Sequence[Row]) -> Predictions:
        x = self._array(rows) if self._numpy_ok else self._frame(rows)
        return self._call(x)

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray | None:
        """Class probabilities in ``classes`` order (None for a model without them)."""
        if not self.has_proba:
            return None
        x = self._array(rows) if self._numpy_ok else self._frame(rows)
        return np.asarray(self.model.predict_proba(x), dtype=np.float64)


class FunctionPredictor:
    """A Python callable: ``fn(list of input dicts) -> list of outputs``."""

    flavor = "python"

    def __init__(self, fn: Callable[[list[dict[str, Any]]], Any], names: Sequence[str]) -> None:
        self.fn = fn
        self.names = list(names)
        self.classes = None

    def predict(self, rows: Sequence[Row]) -> Predictions:
        names = self.names
        result = self.fn([dict(zip(names, r, strict=True)) for r in rows])
        result = list(result)
        if len(result) != len(rows):
            raise ModelError(f"the function returned {len(result)} answers for {len(rows)} rows")
        outputs: list[Any] = []
        conf: list[float | None] = []
        for item in result:
            if isinstance(item, dict) and "output" in item:
                outputs.append(_py(item["output"]))
                c = item.get("confidence")
                conf.append(None if c is None else float(c))
            else:
                outputs.append(_py(item))
                conf.append(None)
        return Predictions(outputs, conf)


class NeedsFields(ModelError):
    """The model reads columns it was not given (perhaps fields with role id or metadata)."""

    def __init__(self, names: Sequence[str], hint: str = "") -> None:
        self.names = list(names)
        self.hint = hint
        super().__init__(
            f"the model needs features the contract does not have: {self.names[:5]}{hint}"
        )


@dataclass(frozen=True)
class ModelInputs:
    """The fields a model is given: names (contract order), their positions in a validated row
    (None when the model takes the whole row) and whether all of them are numeric."""

    names: list[str]
    positions: list[int] | None
    numeric: bool

    @classmethod
    def of(cls, fields: Sequence[Any], reads: Sequence[str] = ()) -> ModelInputs:
        """The ``role: feature`` fields and those named in ``reads``, in contract order."""
        chosen = [
            (i, f)
            for i, f in enumerate(fields)
            if getattr(f, "role", "") == "feature" or f.name in reads
        ]
        if not chosen:
            raise ModelError(
                "the contract has no role: feature field, so the model would be given nothing"
            )
        positions = [i for i, _ in chosen]
        return cls(
            names=[f.name for _, f in chosen],
            positions=None if len(positions) == len(fields) else positions,
            numeric=all(f.type in ("int", "float", "bool") for _, f in chosen),
        )


class Projected:
    """A predictor fed only some fields of each row (its features); everything else about it is
    the inner predictor's."""

    def __init__(self, inner: Any, positions: Sequence[int]) -> None:
        self.inner = inner
        if len(positions) == 1:
            only = positions[0]
            self._take: Callable[[Row], Row] = lambda r: (r[only],)
        else:
            self._take = operator.itemgetter(*positions)

    def _rows(self, rows: Sequence[Row]) -> list[Row]:
        take = self._take
        return [take(r) for r in rows]

    def predict(self, rows: Sequence[Row]) -> Predictions:
        return self.inner.predict(self._rows(rows))

    async def apredict(self, rows: Sequence[Row]) -> Predictions:
        """The inner predictor's asynchronous call (models over HTTP), on the same fields."""
        result: Predictions = await self.inner.apredict(self._rows(rows))
        return result

    def predict_proba(self, rows: Sequence[Row]) -> Any:
        method = getattr(self.inner, "predict_proba", None)
        return None if method is None else method(self._rows(rows))

    def probe(self, rows: Sequence[Row]) -> None:
        method = getattr(self.inner, "probe", None)
        if method is not None:
            method(self._rows(rows))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def for_fields(make: Callable[[list[str], bool], Any], fields: Sequence[Any]) -> Any:
    """``make(names, numeric)`` for the model's fields, projected when it takes fewer than all.

    The model gets the feature fields; if it then names id or metadata fields it reads
    (:class:`NeedsFields`), it is made again with those added.
    """
    inputs = ModelInputs.of(fields)
    try:
        inner = make(inputs.names, inputs.numeric)
    except NeedsFields as exc:
        known = {f.name for f in fields}
        if not set(exc.names) <= known:
            missing = [n for n in exc.names if n not in known][:5]
            raise ModelError(
                f"the model needs features the contract does not have: {missing}{exc.hint}"
            ) from None
        inputs = ModelInputs.of(fields, reads=exc.names)
        inner = make(inputs.names, inputs.numeric)
    return inner if inputs.positions is None else Projected(inner, inputs.positions)


def probe(predictor: Any, rows: Sequence[Row]) -> None:
    """Let a predictor that can choose its input format (scikit-learn) choose it on ``rows``."""
    method = getattr(predictor, "probe", None)
    if method is not None:
        method(rows)


def probabilities(pred: Predictions, k: int) -> dict[str, float] | None:
    """Row ``k``'s class probabilities as ``{label: p}`` (None when the model gave none)."""
    proba = pred.proba
    if proba is None:
        return None
    row = proba[k]
    if isinstance(row, dict):
        return {str(c): float(p) for c, p in row.items()}
    if pred.classes is None:
        return None
    return {str(c): float(p) for c, p in zip(pred.classes, row, strict=False)}


def import_callable(ref: str) -> Callable[..., Any]:
    """``python:package.module:function`` → the function."""
    body = ref.removeprefix("python:")
    mod_name, _, attr = body.partition(":")
    if not mod_name or not attr:
        raise ModelError(f"{ref!r} is not of the form python:module:function")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        raise ModelError(f"cannot import module {mod_name!r}: {exc}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise ModelError(f"module {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ModelError(f"{ref!r} is not callable")
    return fn


def load_sklearn_bytes(data: bytes) -> Any:
    import joblib

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise ModelError(
            f"the model file does not load with joblib ({type(exc).__name__}: {exc})"
        ) from None


__all__ = [
    "FunctionPredictor",
    "ModelInputs",
    "NeedsFields",
    "Predictions",
    "Predictor",
    "Projected",
    "Row",
    "SklearnPredictor",
    "for_fields",
    "import_callable",
    "load_sklearn_bytes",
    "probabilities",
    "probe",
]

"""Predictors for model formats beyond scikit-learn: ONNX and MLflow.

* ONNX files run in onnxruntime (the ``onnx`` extra). A model with one input takes the
  contract's numeric fields as a float32 matrix in contract order; a model with one input per
  field takes named columns. The first output is the answer; a second output, when present,
  holds class probabilities (a tensor, or a list of label → probability maps).
* MLflow models (the ``mlflow`` extra) load through their native flavor when Shipway knows it
  (``sklearn``: the estimator itself, served like a joblib file, probabilities included) and
  through ``mlflow.pyfunc`` otherwise, using the probabilities a pyfunc offers. Shipway keeps a
  snapshot of the model directory as a content-addressed tar archive, so what is served is
  exactly what was registered even if the tracking server changes. A model that needs a
  package that is not installed is refused with that package's name.
"""

from __future__ import annotations

import atexit
import inspect
import io
import re
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipway.errors import ModelError
from shipway.models.predictor import Predictions, Row, SklearnPredictor, _py

# Importing mlflow.pyfunc warns about a type hint inside MLflow itself; it says nothing about
# the model being loaded, so it is kept out of Shipway's output.
warnings.filterwarnings("ignore", message=r".*Any type hint is inferred as AnyType")


class OnnxPredictor:
    flavor = "onnx"

    def __init__(self, data: bytes, names: Sequence[str], labels: Sequence[Any] | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("ONNX models need onnxruntime: pip install 'shipway[onnx]'") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                data, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"the ONNX file does not load: {exc}") from None
        self.names = list(names)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.classes = list(labels) if labels else None
        self._per_field = len(self.inputs) > 1
        if self._per_field:
            missing = [n for n in self.inputs if n not in self.names]
            if missing:
                raise ModelError(
                    f"the ONNX model needs inputs the contract does not have: {missing[:5]}"
                )
            self._pos = {n: self.names.index(n) for n in self.inputs}

    def _feed(self, rows: Sequence[Row]) -> dict[str, Any]:
        if not self._per_field:
            return {self.inputs[0]: np.array(rows, dtype=np.float32)}
        cols = list(zip(*rows, strict=True))
        feed = {}
        for name in self.inputs:
            col = cols[self._pos[name]]
            arr = np.array(col)
            if arr.dtype.kind in "iuf":
                arr = arr.astype(np.float32)
            else:
                arr = arr.astype(object).astype(str)
            feed[name] = arr.reshape(-1, 1)
        return feed

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray | None:
        """Class probabilities in ``classes`` order, when the model outputs them."""
        result = self.session.run(None, self._feed(rows))
        if len(result) < 2 or not self.classes:
            return None
        probs = result[1]
        if isinstance(probs, list):
            return np.array([[float(p.get(c, 0.0)) for c in self.classes] for p in probs])
        return np.asarray(probs, dtype=np.float64)

    def predict(self, rows: Sequence[Row]) -> Predictions:
        result = self.session.run(None, self._feed(rows))
        labels = [_py(v) for v in np.asarray(result[0]).reshape(len(rows), -1)[:, 0]]
        if len(result) < 2:
            return Predictions(labels, [None] * len(rows))
        probs = result[1]
        conf: list[float | None]
        if isinstance(probs, list):  # ZipMap: one {label: p} per row
            conf = [
                float(p[lab]) if lab in p else float(max(p.values()))
                for p, lab in zip(probs, labels, strict=True)
            ]
            return Predictions(labels, conf, None, probs)
        arr = np.asarray(probs, dtype=np.float64)
        conf = arr.max(axis=1).tolist()
        return Predictions(labels, conf, None, arr, self.classes)


#: Python packages an MLflow model may need that Shipway's ``mlflow`` extra installs.
MLFLOW_EXTRA_PACKAGES = frozenset({"mlflow", "skops", "cloudpickle"})

#: Import names whose package on PyPI is named differently.
PACKAGE_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml"}


def _missing_package(exc: BaseException, model_dir: Path) -> str | None:
    """The message for a model that needs a package that is not installed, else None.

    MLflow raises ``ModuleNotFoundError`` itself or wraps it, so the whole chain is searched.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ModuleNotFoundError) and cur.name:
            module = cur.name.partition(".")[0]
            package = PACKAGE_NAMES.get(module, module)
            if package in MLFLOW_EXTRA_PACKAGES:
                how = "pip install 'shipway[mlflow]'"
            else:
                how = f"pip install '{_requirement(model_dir, package) or package}'"
            return (
                f"the MLflow model needs the Python package {package!r}, which is not "
                f"installed: {how}"
            )
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _requirement(model_dir: Path, package: str) -> str | None:
    """The model's own requirement line for ``package`` (MLflow writes requirements.txt)."""
    path = model_dir / "requirements.txt"
    if not path.is_file():
        return None
    want = package.lower().replace("_", "-")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name = re.match(r"[A-Za-z0-9_.\-]*", line.strip())
        if name and name.group().lower().replace("_", "-") == want:
            return line.strip()
    return None


def load_mlflow(
    model_dir: Path, names: Sequence[str], labels: Sequence[Any] | None, numeric: bool
) -> SklearnPredictor | MlflowPredictor:
    """A predictor for an MLflow model folder.

    A model with the ``sklearn`` flavor loads as its estimator (``mlflow.sklearn.load_model``),
    so it serves exactly like the same estimator saved with joblib, probabilities included.
    Any other model loads through ``mlflow.pyfunc``.
    """
    try:
        from mlflow.models import Model
    except ImportError:
        raise ModelError("MLflow models need mlflow: pip install 'shipway[mlflow]'") from None
    try:
        native = "sklearn" in Model.load(str(model_dir)).flavors
        if native:
            import mlflow.sklearn

            model = mlflow.sklearn.load_model(str(model_dir))
        else:
            import mlflow.pyfunc

            model = mlflow.pyfunc.load_model(str(model_dir))
    except Exception as exc:
        missing = _missing_package(exc, model_dir)
        raise ModelError(missing or f"the MLflow model does not load: {exc}") from None
    if native:
        return SklearnPredictor(model, names, numeric)
    return MlflowPredictor(model, names, labels)


class MlflowPredictor:
    """An MLflow pyfunc model, with class probabilities where the model offers them.

    Probabilities come, in this order of preference, from

    * a python model with a ``predict_proba(model_input)`` (or ``(context, model_input)``)
      method: its answers are ``predict``'s, their confidence the probability of that answer;
    * a ``predict`` whose signature declares one output column per label: the answer is the
      most probable label.

    Probabilities as a frame are matched to labels by column name; as an array they are taken
    in the python model's ``classes_`` order, or else the contract's label order.
    """

    flavor = "mlflow"

    def __init__(self, model: Any, names: Sequence[str], labels: Sequence[Any] | None) -> None:
        self.model = model
        self.names = list(names)
        self.classes = list(labels) if labels else None
        self._proba_order: Sequence[Any] | None = None
        self._proba_fn = self._python_proba() if self.classes else None
        self._proba_columns = self._declared_columns() if self.classes else None
        self.has_proba = self._proba_fn is not None or self._proba_columns is not None

    def _python_proba(self) -> Any:
        try:
            python_model = self.model.unwrap_python_model()
        except Exception:
            return None  # not a python model (a flavor's own pyfunc wrapper)
        fn = getattr(python_model, "predict_proba", None)
        if not callable(fn):
            return None
        self._proba_order = getattr(python_model, "classes_", None)
        params = inspect.signature(fn).parameters
        if "context" in params:
            context = getattr(self.model._model_impl, "context", None)
            return lambda frame: fn(context, frame)
        return fn

    def _declared_columns(self) -> list[str] | None:
        signature = self.model.metadata.signature
        if signature is None or signature.outputs is None:
            return None
        outputs = signature.outputs
        if not outputs.has_input_names():
            return None
        declared = [str(n) for n in outputs.input_names()]
        if sorted(declared) != sorted(str(c) for c in self.classes or []):
            return None
        return declared

    def _frame(self, rows: Sequence[Row]) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(list(rows), columns=self.names)

    def _in_label_order(self, out: Any, order: Sequence[Any] | None) -> np.ndarray:
        """Probabilities as an (n, labels) array in ``classes`` order."""
        classes = [str(c) for c in self.classes or []]
        columns = getattr(out, "columns", None)
        if columns is not None:
            by_name = {str(c): c for c in columns}
            missing = [c for c in classes if c not in by_name]
            if missing:
                raise ModelError(f"the model's probabilities have no column for labels {missing}")
            return np.asarray(out[[by_name[c] for c in classes]], dtype=np.float64)
        arr = np.asarray(out, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(classes):
            raise ModelError(
                f"the model gave probabilities of shape {arr.shape} for {len(classes)} labels"
            )
        if order is not None:
            pos = {str(_py(c)): i for i, c in enumerate(order)}
            if sorted(pos) != sorted(classes):
                raise ModelError("the model's classes_ are not the contract's labels")
            arr = arr[:, [pos[c] for c in classes]]
        return arr

    def _proba(self, frame: Any) -> np.ndarray:
        if self._proba_fn is not None:
            return self._in_label_order(self._proba_fn(frame), self._proba_order)
        return self._in_label_order(self.model.predict(frame), self._proba_columns)

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray | None:
        """Class probabilities in ``classes`` order (None for a model without them)."""
        if not self.has_proba:
            return None
        return self._proba(self._frame(rows))

    def predict(self, rows: Sequence[Row]) -> Predictions:
        frame = self._frame(rows)
        classes = self.classes or []
        if self._proba_fn is None and self._proba_columns is not None:
            proba = self._proba(frame)
            idx = proba.argmax(axis=1)
            return Predictions(
                [classes[i] for i in idx.tolist()], proba.max(axis=1).tolist(), None, proba, classes
            )
        out = self.model.predict(frame)
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        arr = np.asarray(out)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim == 2 and classes and arr.shape[1] == len(classes):
            # an undeclared array with one column per label: probabilities in label order
            idx = arr.argmax(axis=1)
            return Predictions(
                [classes[i] for i in idx.tolist()],
                arr.max(axis=1).astype(float).tolist(),
                None,
                arr,
                classes,
            )
        outputs = [_py(v) for v in arr.tolist()]
        if self._proba_fn is None:
            return Predictions(outputs, [None] * len(rows))
        proba = self._proba(frame)
        col = {c: i for i, c in enumerate(classes)}
        conf: list[float | None] = [
            float(proba[r, col[o]]) if o in col else None for r, o in enumerate(outputs)
        ]
        return Predictions(outputs, conf, None, proba, classes)


def pack_directory(path: Path) -> bytes:
    """A deterministic tar of a model directory (sorted names, zeroed times and owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(path.rglob("*")):
            info = tar.gettarinfo(str(p), arcname=str(p.relative_to(path)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def unpack_directory(data: bytes) -> Path:
    """Extract a packed model directory into a new private folder (mode 0700), removed when
    the process ends.

    ``data`` is read from the artifact store after its sha256 was checked, and it is extracted
    afresh at every load: a folder extracted earlier is never reused, since its files could
    have been edited since (loading a model runs its code).
    """
    dest = Path(tempfile.mkdtemp(prefix="shipway-model-"))
    atexit.register(shutil.rmtree, dest, True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest


def fetch_mlflow_uri(uri: str, dest: Path) -> Path:
    """Download an MLflow ``models:/`` or ``runs:/`` URI's files into ``dest``."""
    try:
        import mlflow.artifacts
    except ImportError:
        raise ModelError("MLflow models need mlflow: pip install 'shipway[mlflow]'") from None
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as exc:
        raise ModelError(f"cannot fetch {uri}: {exc}") from None


__all__ = [
    "MlflowPredictor",
    "OnnxPredictor",
    "fetch_mlflow_uri",
    "load_mlflow",
    "pack_directory",
    "unpack_directory",
]

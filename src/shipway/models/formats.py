"""Predictors for model formats beyond scikit-learn: ONNX and MLflow.

* ONNX files run in onnxruntime (the ``onnx`` extra). A model with one input takes the
  contract's numeric fields as a float32 matrix in contract order; a model with one input per
  field takes named columns. The first output is the answer; a second output, when present,
  holds class probabilities (a tensor, or a list of label → probability maps).
* MLflow models (the ``mlflow`` extra) load through ``mlflow.pyfunc``. Shipway keeps a
  snapshot of the model directory as a content-addressed tar archive, so what is served is
  exactly what was registered even if the tracking server changes.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipway.errors import ModelError
from shipway.models.predictor import Predictions, Row, _py


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
        if isinstance(probs, list):  # ZipMap: one {label: p} per row
            conf = [
                float(p[lab]) if lab in p else float(max(p.values()))
                for p, lab in zip(probs, labels, strict=True)
            ]
        else:
            arr = np.asarray(probs, dtype=np.float64)
            conf = arr.max(axis=1).tolist()
        return Predictions(labels, conf)


class MlflowPredictor:
    flavor = "mlflow"

    def __init__(self, model_dir: Path, names: Sequence[str], labels: Sequence[Any] | None) -> None:
        try:
            import mlflow.pyfunc
        except ImportError:
            raise ModelError("MLflow models need mlflow: pip install 'shipway[mlflow]'") from None
        try:
            self.model = mlflow.pyfunc.load_model(str(model_dir))
        except Exception as exc:
            raise ModelError(f"the MLflow model does not load: {exc}") from None
        self.names = list(names)
        self.classes = list(labels) if labels else None

    def predict(self, rows: Sequence[Row]) -> Predictions:
        import pandas as pd

        frame = pd.DataFrame.from_records(list(rows), columns=self.names)
        out = self.model.predict(frame)
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        arr = np.asarray(out)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim == 2 and self.classes and arr.shape[1] == len(self.classes):
            idx = arr.argmax(axis=1)
            return Predictions(
                [self.classes[i] for i in idx.tolist()], arr.max(axis=1).astype(float).tolist()
            )
        return Predictions([_py(v) for v in arr.tolist()], [None] * len(rows))


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


def unpack_directory(data: bytes, dest: Path) -> Path:
    """Extract a packed model directory once into ``dest`` (reused when already there)."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
    marker.write_text("ok")
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
    "pack_directory",
    "unpack_directory",
]

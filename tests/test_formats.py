"""Model formats beyond joblib: ONNX files and MLflow model folders, registered and served."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from shipway.manifest import load_manifest
from shipway.models import Registry
from shipway.settings import Settings
from shipway.store.location import Location, open_service_store
from tests.conftest import Pilot, run_cli

NO_DB = {"SHIPWAY_DATABASE_URL": ""}


def _versions(manifest: Path) -> tuple[Registry, object]:
    m = load_manifest(manifest)
    store = open_service_store(Location.of(m, manifest.resolve(), Settings(database_url=None)))
    return Registry(store), store


def _served(registry: Registry, manifest: Path, version: int, rows: list[tuple]) -> list:
    m = load_manifest(manifest)
    mv = registry.get(m.service.name, version)
    pred = registry.load(mv, m.contract, list(m.output.labels or []))
    return pred.predict(rows).outputs


def test_onnx_model_is_registered_and_answers_like_the_original(
    workspace: Path, pilot: Pilot, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    model = joblib.load(pilot.model)
    frame = pd.read_csv(pilot.data)
    x = frame.drop(columns=["target"]).to_numpy(dtype=np.float32)
    onx = skl2onnx.to_onnx(model, x[:1])
    (tmp_path / "pilot.onnx").write_bytes(onx.SerializeToString())
    manifest = workspace / "shipway.yaml"
    res = run_cli("models", "add", "--model", str(tmp_path / "pilot.onnx"), "-m", str(manifest),
                  env=NO_DB)
    assert res.returncode == 0, res.stderr
    assert "Registered version 2 (onnx" in res.stdout
    reg, store = _versions(manifest)
    try:
        rows = [tuple(r.values()) for r in pilot.rows[:200]]
        expected = model.predict(pd.DataFrame(pilot.rows[:200])).tolist()
        got = _served(reg, manifest, 2, rows)
        agree = np.mean(np.asarray(got) == np.asarray(expected))
        assert agree >= 0.99  # float32 inference may flip a borderline row
        mv = reg.get("cancer", 2)
        assert mv.metrics["gate"]["passed"] is True
        assert "roc_auc" in mv.metrics["holdout"]
    finally:
        store.close()


def test_mlflow_model_folder_is_snapshotted_and_served(
    workspace: Path, pilot: Pilot, tmp_path: Path
) -> None:
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    model = joblib.load(pilot.model)
    folder = tmp_path / "mlflow-model"
    import warnings

    with warnings.catch_warnings():  # MLflow's own advice while writing the fixture
        warnings.simplefilter("ignore")
        mlflow_sklearn.save_model(
            model, str(folder),
            serialization_format=mlflow_sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    manifest = workspace / "shipway.yaml"
    res = run_cli("models", "add", "--model", str(folder), "-m", str(manifest), env=NO_DB)
    assert res.returncode == 0, res.stderr
    assert "Registered version 2 (mlflow" in res.stdout
    # the served model is the registered snapshot, not the folder it came from
    import shutil

    shutil.rmtree(folder)
    reg, store = _versions(manifest)
    try:
        rows = [tuple(r.values()) for r in pilot.rows[:100]]
        expected = model.predict(pd.DataFrame(pilot.rows[:100])).tolist()
        assert _served(reg, manifest, 2, rows) == expected
    finally:
        store.close()


def test_unknown_model_sources_are_refused(workspace: Path, tmp_path: Path) -> None:
    manifest = workspace / "shipway.yaml"
    (tmp_path / "empty").mkdir()
    for model, needle in [
        (str(tmp_path / "nope.joblib"), "does not exist"),
        (str(tmp_path / "empty"), "without an MLmodel file"),
        ("python:tests.pilots.rules:nothere", "has no attribute"),
    ]:
        res = run_cli("models", "add", "--model", model, "-m", str(manifest), env=NO_DB)
        assert res.returncode != 0
        assert needle in " ".join(res.stderr.split()), res.stderr

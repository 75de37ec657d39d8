"""Model formats beyond joblib: ONNX files and MLflow model folders, registered and served."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml

from shipway.errors import ModelError
from shipway.manifest import load_manifest
from shipway.models import Registry
from shipway.models.formats import load_mlflow
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
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "pilot.onnx"), "-m", str(manifest), env=NO_DB
    )
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


def _save_sklearn(model: Any, folder: Path, fmt: str) -> None:
    """``mlflow.sklearn.save_model`` as a user calls it: its default format, or cloudpickle."""
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    kwargs: dict[str, Any] = {}
    if fmt == "default":
        pytest.importorskip("skops")
    else:
        kwargs["serialization_format"] = mlflow_sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE
    with warnings.catch_warnings():  # MLflow's own advice while writing the fixture
        warnings.simplefilter("ignore")
        mlflow_sklearn.save_model(model, str(folder), **kwargs)


def _save_pyfunc(python_model: Any, folder: Path, **kwargs: Any) -> None:
    mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("pip_requirements", ["scikit-learn"])
        mlflow_pyfunc.save_model(str(folder), python_model=python_model, **kwargs)


def _holdout_proba(model: Any, pilot: Pilot, n: int) -> tuple[list[tuple], list[float]]:
    rows = pilot.rows[:n]
    proba = model.predict_proba(pd.DataFrame(rows))
    return [tuple(r.values()) for r in rows], proba.max(axis=1).tolist()


@pytest.mark.parametrize("fmt", ["default", "cloudpickle"])
def test_mlflow_sklearn_model_of_the_champion_passes_the_gate_with_equal_metrics(
    workspace: Path, pilot: Pilot, tmp_path: Path, fmt: str
) -> None:
    model = joblib.load(pilot.model)
    folder = tmp_path / "mlflow_model"
    _save_sklearn(model, folder, fmt)
    if fmt == "default":
        assert (folder / "model.skops").exists()  # what MLflow 3 writes unless told otherwise
    manifest = workspace / "shipway.yaml"
    res = run_cli("models", "add", "--model", str(folder), "-m", str(manifest), env=NO_DB)
    assert res.returncode == 0, res.stderr
    assert "Registered version 2 (mlflow" in res.stdout
    assert "gate: passed" in res.stdout and "note:" not in res.stdout, res.stdout
    assert "cannot be computed" not in res.stdout
    # the served model is the registered snapshot, not the folder it came from
    shutil.rmtree(folder)
    reg, store = _versions(manifest)
    try:
        mv = reg.get("cancer", 2)
        assert mv.metrics["gate"] == {
            "passed": True,
            "reasons": [],
            "checks": mv.metrics["gate"]["checks"],
            "notes": [],
        }
        assert {"roc_auc", "log_loss"} <= set(mv.metrics["holdout"])
        assert mv.metrics["holdout"] == mv.metrics["champion"]["holdout"]
        rows, confidence = _holdout_proba(model, pilot, 100)
        m = load_manifest(manifest)
        pred = reg.load(mv, m.contract, list(m.output.labels or [])).predict(rows)
        assert pred.outputs == model.predict(pd.DataFrame(pilot.rows[:100])).tolist()
        assert pred.confidence == pytest.approx(confidence, abs=1e-12)
    finally:
        store.close()


def test_mlflow_model_decisions_carry_confidences_over_http(
    workspace: Path, pilot: Pilot, tmp_path: Path, start_server: Any
) -> None:
    model = joblib.load(pilot.model)
    _save_sklearn(model, tmp_path / "mlflow_model", "default")
    manifest = workspace / "shipway.yaml"
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "mlflow_model"), "-m", str(manifest), env=NO_DB
    )
    assert res.returncode == 0, res.stderr
    # an identical model needs neither --force nor a reason to take all the traffic
    res = run_cli("rollout", "canary", "2", "--percent", "100", "-m", str(manifest), env=NO_DB)
    assert res.returncode == 0, res.stderr
    server = start_server(manifest)
    _rows, confidence = _holdout_proba(model, pilot, 40)
    r = server.client.post("/v1/predict", json={"inputs": pilot.rows[:40]})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert {d["model_version"] for d in decisions} == {2}
    assert [d["output"] for d in decisions] == model.predict(pd.DataFrame(pilot.rows[:40])).tolist()
    assert [d["confidence"] for d in decisions] == pytest.approx(confidence, abs=1e-12)


def test_pyfunc_without_probabilities_is_registered_with_a_note(
    workspace: Path, pilot: Pilot, tmp_path: Path
) -> None:
    pytest.importorskip("mlflow.pyfunc")
    from tests.pilots.pyfunc import LabelsOnly

    _save_pyfunc(LabelsOnly(joblib.load(pilot.model)), tmp_path / "labels_only")
    manifest = workspace / "shipway.yaml"
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "labels_only"), "-m", str(manifest), env=NO_DB
    )
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "gate: passed" in out, out
    for name in ("roc_auc", "log_loss"):
        assert (
            f"note: {name} cannot be computed for this version (it needs class probabilities); "
            "not checked" in out
        ), out
    reg, store = _versions(manifest)
    try:
        gate = reg.get("cancer", 2).metrics["gate"]
        assert gate["passed"] is True and gate["reasons"] == []
        assert len(gate["notes"]) == 2
        assert any(c.startswith("accuracy ") for c in gate["checks"])
    finally:
        store.close()

    # the manifest can make a missing metric a failure
    data = yaml.safe_load(manifest.read_text())
    data["quality"]["on_missing_metric"] = "fail"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "labels_only"), "-m", str(manifest), env=NO_DB
    )
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "Registered version 3" in out and "gate: failed" in out, out
    assert "roc_auc cannot be computed for this version" in out


@pytest.mark.parametrize("kind", ["predict_proba", "probability_frame"])
def test_pyfunc_probabilities_are_used(
    workspace: Path, pilot: Pilot, tmp_path: Path, kind: str
) -> None:
    pytest.importorskip("mlflow.pyfunc")
    from mlflow.models import infer_signature

    from tests.pilots.pyfunc import ProbabilityFrame, WithPredictProba

    model = joblib.load(pilot.model)
    if kind == "predict_proba":
        _save_pyfunc(WithPredictProba(model), tmp_path / "pyfunc")
    else:
        wrapped = ProbabilityFrame(model)
        frame = pd.DataFrame(pilot.rows[:5])
        signature = infer_signature(frame, wrapped.predict(None, frame))
        _save_pyfunc(wrapped, tmp_path / "pyfunc", signature=signature)
    manifest = workspace / "shipway.yaml"
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "pyfunc"), "-m", str(manifest), env=NO_DB
    )
    assert res.returncode == 0, res.stderr
    assert "gate: passed" in res.stdout and "note:" not in res.stdout, res.stdout
    reg, store = _versions(manifest)
    try:
        mv = reg.get("cancer", 2)
        mine, champion = mv.metrics["holdout"], mv.metrics["champion"]["holdout"]
        assert set(mine) == set(champion)
        assert mine == pytest.approx(champion, rel=1e-9)
        rows, confidence = _holdout_proba(model, pilot, 50)
        m = load_manifest(manifest)
        pred = reg.load(mv, m.contract, list(m.output.labels or [])).predict(rows)
        assert pred.confidence == pytest.approx(confidence, abs=1e-12)
    finally:
        store.close()


def test_a_model_that_needs_a_missing_package_is_refused_naming_it(
    workspace: Path, pilot: Pilot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = joblib.load(pilot.model)
    # the skops format, where skops is not installed
    _save_sklearn(model, tmp_path / "skops_model", "default")
    m = load_manifest(workspace / "shipway.yaml")
    names = [f.name for f in m.contract.inputs]
    monkeypatch.setitem(sys.modules, "skops", None)  # how Python reports an absent package
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ModelError) as info:
        load_mlflow(tmp_path / "skops_model", names, [0, 1], numeric=True)
    assert info.value.message == (
        "the MLflow model needs the Python package 'skops', which is not installed: "
        "pip install 'shipway[mlflow]'"
    )
    monkeypatch.undo()

    # a python model whose code lives in a package the serving machine lacks
    pytest.importorskip("mlflow.pyfunc")
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / "acme_features.py").write_text(
        "from tests.pilots.pyfunc import LabelsOnly\n\n\nclass Scorer(LabelsOnly):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    import acme_features  # type: ignore[import-not-found]

    try:
        _save_pyfunc(
            acme_features.Scorer(model),
            tmp_path / "acme",
            pip_requirements=["scikit-learn", "acme-features==1.2.0"],
        )
    finally:
        del sys.modules["acme_features"]
    manifest = workspace / "shipway.yaml"
    res = run_cli(
        "models", "add", "--model", str(tmp_path / "acme"), "-m", str(manifest), env=NO_DB
    )
    assert res.returncode != 0
    err = " ".join(res.stderr.split())
    assert (
        "the MLflow model needs the Python package 'acme_features', which is not installed: "
        "pip install 'acme-features==1.2.0'" in err
    ), err
    assert "ModuleNotFoundError" not in err


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


def test_init_takes_the_model_formats_models_add_takes(pilot: Pilot, tmp_path: Path) -> None:
    """One place decides what --model names: init registers ONNX and MLflow pilots too."""
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    model = joblib.load(pilot.model)
    x = pd.read_csv(pilot.data).drop(columns=["target"]).to_numpy(dtype=np.float32)
    (tmp_path / "pilot.onnx").write_bytes(skl2onnx.to_onnx(model, x[:1]).SerializeToString())
    _save_sklearn(model, tmp_path / "mlflow_model", "cloudpickle")
    for source, flavor in (
        (tmp_path / "pilot.onnx", "onnx"),
        (tmp_path / "mlflow_model", "mlflow"),
    ):
        target = tmp_path / f"svc-{flavor}"
        res = run_cli(
            "init",
            "--model",
            str(source),
            "--data",
            str(pilot.data),
            "--target",
            "target",
            "--name",
            flavor,
            "--dir",
            str(target),
            env=NO_DB,
        )
        assert res.returncode == 0, res.stderr
        reg, store = _versions(target / "shipway.yaml")
        try:
            mv = reg.get(flavor, 1)
            assert mv.flavor == flavor and mv.artifact_sha256 is not None
            assert mv.metrics["holdout"]["accuracy"] > 0.95
            assert load_manifest(target / "shipway.yaml").output.labels == [0, 1]
        finally:
            store.close()
    missing = run_cli(
        "init",
        "--model",
        str(tmp_path / "nope.onnx"),
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--dir",
        str(tmp_path / "x"),
        env=NO_DB,
    )
    assert missing.returncode == 1 and "nope.onnx does not exist" in missing.stderr

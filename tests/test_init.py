"""``shipway init``: what it writes, and one clear sentence for every bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from shipway.manifest import load_manifest
from tests.conftest import Pilot, run_cli

NO_DB = {"SHIPWAY_DATABASE_URL": ""}


def _init(*args: str) -> tuple[int, str, str]:
    res = run_cli("init", *args, env=NO_DB)
    return res.returncode, res.stdout, res.stderr


def test_init_writes_manifest_and_registers_version_1(pilot: Pilot, tmp_path: Path) -> None:
    code, out, err = _init(
        "--model",
        str(pilot.model),
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--dir",
        str(tmp_path),
    )
    assert code == 0, err
    m = load_manifest(tmp_path / "shipway.yaml")
    assert m.service.name == "data"  # from the data file's name
    assert m.model.version == 1
    assert m.model.uri.startswith("sklearn:sha256:")
    assert len(m.contract.inputs) == 30
    radius = next(f for f in m.contract.inputs if f.name == "mean radius")
    frame = pd.read_csv(pilot.data)
    assert radius.type == "float" and not radius.nullable
    assert radius.min <= frame["mean radius"].min() and radius.max >= frame["mean radius"].max()
    assert m.output.kind == "classification" and m.output.labels == [0, 1]
    assert m.quality.metrics["accuracy"].min is not None
    assert "roc_auc" in out
    # the artifact is stored by content, not by its original path
    digest = m.model.uri.rsplit(":", 1)[1]
    stored = tmp_path / ".shipway" / "artifacts" / "sha256" / digest[:2] / digest
    assert stored.read_bytes() == pilot.model.read_bytes()


def test_init_infers_categories_bools_and_nullable_ints(tmp_path: Path) -> None:
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    n = 200
    frame = pd.DataFrame(
        {
            "age": pd.array([20 + i % 50 if i % 17 else None for i in range(n)], dtype="Int64"),
            "plan": ["basic", "pro", "team"] * (n // 3) + ["basic"] * (n % 3),
            "active": [i % 2 == 0 for i in range(n)],
            "label": ["yes" if i % 3 else "no" for i in range(n)],
        }
    )
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", SimpleImputer(), ["age"]),
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                ("b", "passthrough", ["active"]),
            ]
        ),
        LogisticRegression(),
    ).fit(frame.drop(columns=["label"]), frame["label"])
    joblib.dump(model, tmp_path / "m.joblib")
    frame.to_csv(tmp_path / "d.csv", index=False)
    code, _out, err = _init(
        "--model",
        str(tmp_path / "m.joblib"),
        "--data",
        str(tmp_path / "d.csv"),
        "--target",
        "label",
        "--dir",
        str(tmp_path),
    )
    assert code == 0, err
    fields = {f.name: f for f in load_manifest(tmp_path / "shipway.yaml").contract.inputs}
    assert fields["age"].type == "int" and fields["age"].nullable
    assert fields["plan"].type == "category" and fields["plan"].values == ["basic", "pro", "team"]
    assert fields["active"].type == "bool"
    labels = load_manifest(tmp_path / "shipway.yaml").output.labels
    assert labels == ["no", "yes"]


def test_init_accepts_a_python_function(pilot: Pilot, tmp_path: Path) -> None:
    code, _out, err = _init(
        "--model",
        "python:tests.pilots.rules:predict",
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--dir",
        str(tmp_path),
    )
    assert code == 0, err
    m = load_manifest(tmp_path / "shipway.yaml")
    assert m.model.uri == "python:tests.pilots.rules:predict"
    assert m.output.kind == "classification"


def test_bad_inputs_exit_non_zero_with_one_sentence(pilot: Pilot, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"this is not a pickle")
    other = tmp_path / "other.csv"
    pd.DataFrame({"a": range(20), "b": range(20), "target": [0, 1] * 10}).to_csv(other, index=False)
    cases = [
        (
            [
                "--model",
                str(tmp_path / "missing.joblib"),
                "--data",
                str(pilot.data),
                "--target",
                "target",
            ],
            "does not exist",
        ),
        (
            [
                "--model",
                str(pilot.model),
                "--data",
                str(tmp_path / "nope.csv"),
                "--target",
                "target",
            ],
            "does not exist",
        ),
        (
            ["--model", str(pilot.model), "--data", str(pilot.data), "--target", "diagnosis"],
            "target column 'diagnosis' is not in data.csv",
        ),
        (
            ["--model", str(garbage), "--data", str(pilot.data), "--target", "target"],
            "does not load",
        ),
        (
            ["--model", str(pilot.model), "--data", str(other), "--target", "target"],
            "needs features the contract does not have",
        ),
        (
            [
                "--model",
                "python:tests.pilots.rules:broken",
                "--data",
                str(pilot.data),
                "--target",
                "target",
            ],
            "cannot predict",
        ),
        (
            [
                "--model",
                "python:tests.pilots.nothere:f",
                "--data",
                str(pilot.data),
                "--target",
                "target",
            ],
            "cannot import module",
        ),
    ]
    for i, (args, needle) in enumerate(cases):
        code, out, err = _init(*args, "--dir", str(tmp_path / f"c{i}"))
        assert code != 0, (args, out)
        assert needle in " ".join(err.split()), (args, err)
        assert "Traceback" not in err
        assert not (tmp_path / f"c{i}" / "shipway.yaml").exists()


def test_init_refuses_to_overwrite_without_force(pilot: Pilot, tmp_path: Path) -> None:
    args = [
        "--model",
        str(pilot.model),
        "--data",
        str(pilot.data),
        "--target",
        "target",
        "--dir",
        str(tmp_path),
    ]
    assert _init(*args)[0] == 0
    code, _out, err = _init(*args)
    assert code != 0 and "already exists" in err
    code, _out, err = _init(*args, "--force")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "shipway.yaml").read_text())["model"]["version"] == 2


def test_serve_refuses_a_tampered_artifact(pilot: Pilot, tmp_path: Path) -> None:
    assert (
        _init(
            "--model",
            str(pilot.model),
            "--data",
            str(pilot.data),
            "--target",
            "target",
            "--dir",
            str(tmp_path),
        )[0]
        == 0
    )
    digest = load_manifest(tmp_path / "shipway.yaml").model.uri.rsplit(":", 1)[1]
    stored = tmp_path / ".shipway" / "artifacts" / "sha256" / digest[:2] / digest
    stored.write_bytes(stored.read_bytes() + b"\x00")
    res = run_cli("serve", str(tmp_path / "shipway.yaml"), "--port", "1", "--dev", env=NO_DB)
    assert res.returncode != 0
    assert "refusing to load it" in " ".join(res.stderr.split())


def test_the_commands_init_prints_reach_an_authenticated_monitored_service(
    pilot: Pilot, tmp_path: Path
) -> None:
    """init's closing commands, pasted into a shell as printed (on a free port), serve the
    pilot with authentication on and alert rules loaded."""
    import re

    from tests.conftest import run_pasted

    res = run_cli(
        "init",
        "--model",
        str(pilot.model),
        "--data",
        str(pilot.data),
        "--target",
        pilot.target,
        "--name",
        "pasted",
        cwd=tmp_path,
        env={"SHIPWAY_DATABASE_URL": ""},
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    start = lines.index("Next, to serve it with authentication on (copy and paste):")
    commands = [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]
    assert len(commands) == 6  # secret, admin key, predictor key, serve, wait, first request
    out = run_pasted(commands, tmp_path)
    decision = re.search(r'\{"id":.*\}', out.stdout)
    assert decision is not None, out.stdout + out.stderr
    assert '"route":"champion"' in decision.group(0)
    assert "authentication on" in out.stderr and "3 alert rules" in out.stderr

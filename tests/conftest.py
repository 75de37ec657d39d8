"""Shared fixtures: a real pilot, workspaces, stores on SQLite and PostgreSQL, real servers.

PostgreSQL tests use ``SHIPWAY_TEST_POSTGRES_URL`` (CI sets it); where it is unset they are
skipped, not failed. Each PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

PG_ENV = "SHIPWAY_TEST_POSTGRES_URL"


@dataclass(frozen=True)
class Pilot:
    model: Path
    data: Path
    target: str
    rows: list[dict[str, Any]]


@pytest.fixture(scope="session")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Pilot:
    """A scikit-learn pipeline trained on the bundled breast-cancer data, saved with joblib."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = tmp_path_factory.mktemp("pilot")
    frame = load_breast_cancer(as_frame=True).frame
    x, y = frame.drop(columns=["target"]), frame["target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    joblib.dump(model, d / "pilot.joblib")
    frame.to_csv(d / "data.csv", index=False)
    rows = [{k: float(v) for k, v in r.items()} for r in x.to_dict("records")]
    return Pilot(d / "pilot.joblib", d / "data.csv", "target", rows)


def _pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@contextlib.contextmanager
def pg_schema_url(base: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped on exit."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL: SQLite in a temp folder, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'shipway.db'}"
        return
    base = _pg_url()
    if base is None:
        pytest.skip(f"no PostgreSQL configured ({PG_ENV} is unset)")
    with pg_schema_url(base) as url:
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shipway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shipway", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``shipway`` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        shipway_cmd(*args),
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def edit_sections(manifest: Path, **sections: Any) -> None:
    """Edit a manifest's top-level sections: a dict merges into a section that is a dict,
    anything else replaces it."""
    import yaml

    spec = yaml.safe_load(manifest.read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))


def run_pasted(
    commands: list[str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Shell commands run as a user pastes them (``8000`` moved to a free port), with the
    ``shipway`` of this environment on PATH and no Shipway settings inherited; any server
    they start in the background is stopped at the end."""
    port = str(free_port())
    script = "\n".join(c.replace("8000", port) for c in commands) + "\nkill %1; wait\n"
    env = {
        **os.environ,
        "SHIPWAY_DATABASE_URL": "",
        "SHIPWAY_DEV_MODE": "",
        "SHIPWAY_API_KEY": "",
        "SHIPWAY_SECRET_KEY": "",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


class Server:
    """A real ``shipway serve`` process on 127.0.0.1.

    In development mode (authentication off) unless ``env`` says otherwise: the governance
    tests run it with authentication on (``SHIPWAY_DEV_MODE=""`` and a secret).
    """

    def __init__(self, manifest: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = manifest.parent / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            shipway_cmd("serve", str(manifest), "--port", str(self.port), "--log-level", "warning"),
            env={**os.environ, "SHIPWAY_DEV_MODE": "1", **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.base, timeout=30)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def workspace(tmp_path: Path, pilot: Pilot) -> Path:
    """A folder where ``shipway init`` has run on the pilot (SQLite store beside it)."""
    res = run_cli(
        "init",
        "--model",
        str(pilot.model),
        "--data",
        str(pilot.data),
        "--target",
        pilot.target,
        "--name",
        "cancer",
        "--dir",
        str(tmp_path / "svc"),
        env={"SHIPWAY_DATABASE_URL": ""},
    )
    assert res.returncode == 0, res.stderr
    return tmp_path / "svc"


@pytest.fixture
def start_server() -> Iterator[Any]:
    servers: list[Server] = []

    def start(manifest: Path, env: dict[str, str] | None = None) -> Server:
        s = Server(manifest, env)
        servers.append(s)
        s.wait_ready()
        return s

    yield start
    for s in servers:
        s.stop()

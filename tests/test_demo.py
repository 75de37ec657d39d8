"""``shipway demo`` runs the whole path on a fresh workspace and reports what happened."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import free_port, run_cli


def test_demo_runs_and_every_answer_is_logged(tmp_path: Path) -> None:
    res = run_cli(
        "demo",
        "--duration",
        "14",
        "--port",
        str(free_port()),
        "--workdir",
        str(tmp_path / "demo"),
        timeout=180,
        env={"COLUMNS": "120"},
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    answered = int(re.search(r"rows answered \(logged\)\s*│\s*(\d+)", out).group(1))
    rejected = int(re.search(r"requests rejected \(422\)\s*│\s*(\d+)", out).group(1))
    logged = int(re.search(r"decision log: (\d+) decisions committed", out).group(1))
    assert answered > 50
    assert rejected > 0
    assert logged == answered
    assert re.search(r"latency p50 / p99\s*│\s*[\d.]+ ms / [\d.]+ ms", out)
    assert "/docs" in out and "/metrics" in out
    drifted = re.search(r"monitor: (\d+) of \d+ inputs drifted[^:]*: (.*)", out)
    assert drifted is not None, out
    assert set(drifted.group(2).split(", ")) == {"mean radius", "mean texture"}  # the shift
    assert (tmp_path / "demo" / "shipway.yaml").exists()
